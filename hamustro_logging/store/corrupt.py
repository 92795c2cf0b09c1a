"""A database SQLite reports as corrupt: set aside, and what can be read of it carried over.

When SQLite says "database disk image is malformed" or "file is not a
database", the outermost gated call of the thread that met it
(:func:`~hamustro_logging.store.db.gated`) calls :meth:`Salvage.salvage`,
which sets the file aside as ``cache.db.corrupt-<time>``, opens a fresh
database and carries the readable rows over (read by
:mod:`hamustro_logging.salvage`) a bounded slice at a time: the first slice
at once, the rest at later opens and claims (:meth:`Salvage.resume`), by
this process or another. How far a file has been carried is its
``s/salvage/{file name}`` row, written with the rows carried, so no row is
carried twice. All of it under the folder's ``salvage.lock`` (a ``flock``;
see :mod:`~hamustro_logging.store.db` for where it stands among the locks),
so two processes that notice together do not each set aside the other's
fresh database.

Who calls what: the ``Queue``, on whichever thread met the damage or opens
the folder or claims a batch (the spool and send threads, the app's thread
through ``ClientTracker``, the CLI).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Iterator

import diskcache

from ..salvage import known_numbers, read_slice, rows_with
from .append import Appender
from .counts import Books, Counters
from .db import Db, file_id
from .groups import Groups
from .keys import KEY_PREFIXES, LEDGER_PREFIX, SALVAGE, SINCE, parse_chunk_key

__all__ = ["Salvage"]

#: Between two slices of a salvage at claims: this many times ``salvage_seconds``
#: (a sender spends at most about a tenth of its time on it).
_SALVAGE_PAUSE = 10


@contextlib.contextmanager
def _folder_lock(directory: str, wait: bool = True) -> Iterator[bool]:
    """An exclusive lock on the folder across processes (for setting a database aside).

    Yields whether it is held: without ``wait``, False at once if another holds it.
    """
    path = os.path.join(directory, "salvage.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


class Salvage:
    """Salvages for one ``Queue``; ``salvage_seconds``: how long one slice may read."""

    def __init__(
        self,
        db: Db,
        counters: Counters,
        books: Books,
        appender: Appender,
        groups: Groups,
        salvage_seconds: float,
    ) -> None:
        self._db = db
        self._counters = counters
        self._books = books
        self._appender = appender
        self._groups = groups
        self.salvage_seconds = salvage_seconds
        #: A set-aside database may still hold rows to carry (looked at when
        #: opening, then at claims, no more often than each ``_at``).
        self._salvaging = True
        self._at = 0.0

    def salvage(self, error: str, register: Callable[[str, bytes, str | None], str]) -> None:
        """Set a corrupt database aside, and carry a first slice of what can be read of it.

        Under a lock on the folder, so two processes that notice together do
        not each set aside the other's fresh database: the one that comes
        second finds the file replaced and only reopens. Before any row is
        carried, numbering jumps past every number the file shows (its
        counters and chunk keys, read through its key index), so a row
        carried by a later slice never meets a number given meanwhile, and
        the journal offsets (``j/``) are carried first. The ledger's rows
        (``s/ledger/``) are added to the new database's as the slices meet
        them (``Books.carry``), and the events that could not be read are
        counted as ``set_aside`` once the last slice is carried. One slice
        reads for at most about ``salvage_seconds``: a large or badly damaged
        file is carried over later opens and claims (:meth:`resume`); it
        stays as ``cache.db.corrupt-<time>``. ``register`` (the
        ``Queue``'s ``register_header``) registers again each group this
        object registered.
        """
        db, appender = self._db, self._appender
        with db.gate(), _folder_lock(db.directory):
            with contextlib.suppress(Exception):
                db.cache.close()
            if file_id(db.path) != db.db_id:
                db.open(self._books.begin)  # another process did it already
                return
            aside = f"{db.path}.corrupt-{time.time_ns()}"
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(db.path + suffix, aside + suffix)
            db.open(self._books.begin)
            self._groups.known.clear()
            appender.tail = None
            name = os.path.basename(aside)
            for session, nr in known_numbers(aside, db.timeout).items():
                appender.known[session] = max(appender.known.get(session, 0), nr)
            appender.carry_numbers()
            with db.transaction():
                db.cache.set(SALVAGE + name, 0)
                # How far each journal segment was moved in, before a spool
                # can move one in again from its start.
                for key, value in rows_with(aside, "j/", KEY_PREFIXES, db.timeout):
                    db.cache.add(key, value)
            carried, done = self._carry_slice(name) or (0, True)
            self._at = time.monotonic() + _SALVAGE_PAUSE * self.salvage_seconds
            appender.carry_numbers()
            for (session, _), (header, destination) in list(self._groups.registered.items()):
                register(session, header, destination)
        later = "" if done else "; the rest is carried over at the next opens and sends"
        db.notify(
            f"the queue database in {db.directory} is corrupt ({error}); set it aside as "
            f"{name} and carried {carried} readable rows into a new one{later}"
            + (self._ledger_lost(name) if done else "")
        )

    def resume(self) -> None:
        """Carry one more slice of a set-aside database not finished yet, if it is time.

        At every open, then at claims no more often than every
        ``_SALVAGE_PAUSE`` slices' time. Skipped while another process (or
        thread) carries one. A failure to write (a full disk, a lock held
        too long) leaves the rest for a later try.
        """
        now = time.monotonic()
        if not self._salvaging or now < self._at:
            return
        db = self._db
        self._at = now + _SALVAGE_PAUSE * self.salvage_seconds
        names = [key[len(SALVAGE) :] for key in db.keys_with(SALVAGE)]
        self._salvaging = bool(names)
        if not names:
            return
        try:
            with _folder_lock(db.directory, wait=False) as held:
                if not held:
                    return
                carried = self._carry_slice(names[0])
                self._appender.carry_numbers()
        except (OSError, sqlite3.OperationalError, diskcache.Timeout):
            return
        if carried is not None and carried[1]:
            db.notify(
                f"carried what could be read of {names[0]} (a corrupt database set aside) "
                f"into the queue in {db.directory}" + self._ledger_lost(names[0])
            )

    def _carry_slice(self, name: str) -> tuple[int, bool] | None:
        """Carry the next slice of the set-aside database ``name``: (rows carried, finished).

        None if there is nothing to carry (finished by another process, the
        file removed). Under the folder lock. The rows and the new position
        are written in one transaction, so a row is never carried twice (it
        could have been sent and deleted since); a row the new database has
        already is left as it is there.
        """
        db, known = self._db, self._appender.known
        key = SALVAGE + name
        position = db.int_row(key, -1)
        path = os.path.join(db.directory, name)
        if position == -1:
            return None
        if position is None or not os.path.isfile(path):  # unreadable marker, or file removed
            with db.transaction():
                db.cache.delete(key)
            return None
        got = read_slice(path, KEY_PREFIXES, position, self.salvage_seconds, db.timeout)
        carried = pending = size = rejected = aside = 0
        with db.transaction():
            cache = db.cache
            if db.int_row(key, -1) != position:
                return 0, False  # carried meanwhile by someone that did not take the lock
            for row, value in got.rows:
                if row.startswith(LEDGER_PREFIX):
                    self._books.carry(row, value)
                    continue
                if row.startswith("n/"):
                    if type(value) is int:
                        known[row[2:]] = max(known.get(row[2:], 0), value)
                    continue
                if not cache.add(row, value):
                    continue
                carried += 1
                parsed = parse_chunk_key(row) if row[:2] in ("e/", "r/") else None
                if parsed is not None:
                    last_nr = parsed[2] + parsed[3] - 1
                    known[parsed[0]] = max(known.get(parsed[0], 0), last_nr)
                if parsed is not None and row.startswith("e/"):
                    pending += parsed[3]
                    size += len(value) if isinstance(value, bytes) else 0
                rejected += parsed is not None and row.startswith("r/")
                aside += row.startswith("x/")
            self._counters.bump(pending=pending, size=size, rejected=rejected, aside=aside)
            if got.done:
                cache.delete(key)
                # Events that could not be read stay in the file set aside:
                # counted now that no later slice can still carry them.
                self._books.reconcile()
            else:
                cache.set(key, got.position)
        return carried, got.done

    def _ledger_lost(self, name: str) -> str:
        """What to add to the line of a finished salvage if its ``since`` was not carried.

        The new database's ``since`` is later than the file was set aside
        (``cache.db.corrupt-<ns>``); a carried one is earlier.
        """
        try:
            aside_ms = int(name.rpartition("-")[2]) // 1_000_000
        except ValueError:
            return ""
        since = self._db.int_row(SINCE)
        if since is not None and since < aside_ms:
            return ""
        return "; the ledger's counts could not be read: counting starts again from here"
