"""The queue folder is a trust boundary: checks made before the queue uses it.

Whoever can write the queue folder can make the application send anything,
signed with its shared secret: it is enough to replace ``cache.db``. So, as
``ssh`` does with ``~/.ssh``, the queue refuses a folder, or a database file
in it, that is not this user's alone:

* the folder must be a real folder (not a symbolic link), owned by the
  effective user, and not writable by group or others;
* ``cache.db``, ``cache.db-wal`` and ``cache.db-shm``, where they exist, must
  be plain files (not symbolic links, not hard links to another file), owned
  by the effective user, and not writable by group or others.

Every check uses ``lstat`` and files are opened with ``O_NOFOLLOW``: a
symbolic link planted in place of the folder or of a file is refused, never
followed. Folders the library creates (the queue folder and any missing
parent) are 0700, its database files 0600; the queue keeps every value
inside ``cache.db`` (no value files).

The store (:class:`~hamustro_logging.store.db.Db`, for each
:class:`~hamustro_logging.queue.Queue`) calls :func:`open_private` before
diskcache opens anything and :func:`seal` once the database files exist, at
every open and every reopen. On systems without POSIX owners (Windows) the
checks are skipped.

>>> import os, tempfile
>>> base = tempfile.mkdtemp()
>>> identity = open_private(os.path.join(base, "a", "queue"))
>>> oct(os.stat(os.path.join(base, "a")).st_mode & 0o777)
'0o700'
>>> os.chmod(os.path.join(base, "a", "queue"), 0o777)
>>> try:
...     open_private(os.path.join(base, "a", "queue"))
... except UnsafeQueueFolder as exc:
...     print(str(exc).replace(base, "BASE"))
queue folder BASE/a/queue can be written by group or others (mode 0777); run \
`chmod 700 BASE/a/queue`, or set queue_dir to a folder of your own
"""

from __future__ import annotations

import contextlib
import os
import shlex
import stat

__all__ = ["DB_FILES", "FolderId", "UnsafeQueueFolder", "check_folder", "open_private", "seal"]

#: The SQLite files of a diskcache folder: the database and its WAL files.
DB_FILES = ("cache.db", "cache.db-wal", "cache.db-shm")

#: (st_dev, st_ino) of a checked folder: the same folder must still be there
#: once diskcache has opened it (a swap in between is refused).
FolderId = tuple[int, int]

_POSIX = hasattr(os, "geteuid")


class UnsafeQueueFolder(PermissionError):
    """The queue folder, or a database file in it, may be changed by another user.

    The message is one line: what is wrong and how to fix it.
    """


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def _refuse_shared(what: str, path: str, st: os.stat_result, chmod: str) -> None:
    """Raise unless ``st`` (of ``path``, ``what`` names it) is this user's alone."""
    euid = os.geteuid()
    if st.st_uid != euid:
        raise UnsafeQueueFolder(
            f"{what} {path} belongs to uid {st.st_uid}, not to this user (uid {euid}); "
            "set queue_dir to a folder of your own"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeQueueFolder(
            f"{what} {path} can be written by group or others (mode {_mode(st)}); "
            f"run `chmod {chmod} {shlex.quote(path)}`, or set queue_dir to a folder of your own"
        )


def check_folder(directory: str | os.PathLike[str]) -> FolderId:
    """Refuse a queue folder (or database file) another user could change; return its id.

    Raises :class:`UnsafeQueueFolder` (a ``PermissionError``) saying what is
    wrong, ``FileNotFoundError`` if the folder does not exist.
    """
    path = os.path.abspath(directory)  # no trailing "/": lstat must see a link itself
    st = os.lstat(path)
    if not _POSIX:
        return st.st_dev, st.st_ino
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeQueueFolder(
            f"queue folder {path} is a symbolic link; set queue_dir to a real folder"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeQueueFolder(f"queue folder {path} is not a folder")
    _refuse_shared("queue folder", path, st, "700")
    for name in DB_FILES:
        file = os.path.join(path, name)
        try:
            fst = os.lstat(file)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(fst.st_mode):
            raise UnsafeQueueFolder(
                f"queue file {file} is a symbolic link; remove it (the queue keeps plain files)"
            )
        if not stat.S_ISREG(fst.st_mode):
            raise UnsafeQueueFolder(f"queue file {file} is not a plain file; remove it")
        _refuse_shared("queue file", file, fst, "600")
        if fst.st_nlink > 1:
            raise UnsafeQueueFolder(
                f"queue file {file} has {fst.st_nlink} hard links (another name for the same "
                "file); remove the other names or set queue_dir to a new folder"
            )
    return st.st_dev, st.st_ino


def _make_private_dirs(path: str) -> None:
    """Create ``path`` and every missing parent, each 0700.

    (``os.makedirs(mode=...)`` applies the mode to the last folder only.)
    """
    missing: list[str] = []
    while not os.path.lexists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for folder in reversed(missing):
        # Made meanwhile by another process or thread: checked by the caller.
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)


def open_private(directory: str | os.PathLike[str]) -> FolderId:
    """Create the queue folder if missing (0700, with 0700 parents), then check it.

    Called before diskcache opens anything. Raises :class:`UnsafeQueueFolder`.
    """
    path = os.path.abspath(directory)
    _make_private_dirs(path)
    return check_folder(path)


def seal(directory: str | os.PathLike[str], folder_id: FolderId) -> None:
    """After diskcache opened the folder: same folder, safe files, each 0600.

    Each file is checked with ``lstat`` (a plain file, not a link) before its
    mode is set; nobody else can swap it meanwhile, since the folder was
    checked to be writable by this user only. (Never open and close the
    database files here: closing any descriptor of a file drops every POSIX
    lock the process holds on it, SQLite's included.) chmod rather than a
    umask: the umask is the whole process's, other threads' files included.
    """
    path = os.path.abspath(directory)
    st = os.lstat(path)
    if (st.st_dev, st.st_ino) != folder_id:
        raise UnsafeQueueFolder(
            f"queue folder {path} was replaced while it was being opened; "
            "check who else can write its parent folder"
        )
    if _POSIX:
        for name in DB_FILES:
            file = os.path.join(path, name)
            try:
                fst = os.lstat(file)
            except OSError:
                continue  # missing: nothing to protect
            if (
                stat.S_ISREG(fst.st_mode)
                and fst.st_uid == os.geteuid()
                and stat.S_IMODE(fst.st_mode) != 0o600
            ):
                os.chmod(file, 0o600)
    check_folder(path)
