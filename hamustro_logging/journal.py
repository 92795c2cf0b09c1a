"""The journal: an event is on disk the moment ``emit()`` returns, however the process ends.

Each handler appends the events it accepts to a journal segment of its own
in the queue folder's ``journal/`` folder: a preallocated file written
through a shared memory map. An append is a copy into memory, no system
call; the pages belong to the file, not to the process, so the kernel keeps
them when the process is killed (SIGTERM's default action, SIGKILL, the OOM
killer, ``os._exit``, a crash in a C extension) and writes them back in its
own time. What still loses events is a power cut or kernel crash before the
kernel wrote the pages back, unless the writer syncs each append
(``durable=True``: an ``msync`` per event).

A *mover* (:mod:`hamustro_logging.spool`) copies records from segments into
the SQLite store, where events get their numbers, in transactions that also
record how far each segment was moved (``j/{segment}`` in the store), so a
record is moved exactly once whoever moves it and whenever a mover dies.

Who calls what:

* :class:`JournalWriter` is the handler's: ``append`` on the logging thread
  (under the handler's lock: one writer per segment), ``close`` from
  ``close()``, ``forget`` in a forked child;
* :func:`open_segment`, :meth:`Segment.records` and friends are the movers'
  (the handler's spool thread, ``hamustro-logging agent``, the CLI).

Ownership is a ``flock`` on the segment, held by its writer for as long as
it writes: a segment whose lock can be taken belongs to nobody (its writer
ended, closed it, or moved on to its next segment) and is *adopted* by any
mover: moved to the end, then removed. The kernel drops a dead process's
locks, in any PID namespace. A forked child lets go of the parent's
segment (its descriptor and its map, which would otherwise keep the lock
alive after the parent died) and starts its own.

Layout of a segment (little-endian integers)::

    0    8  b"HAMJRNL1"
    8    8  hint: bytes of records moved into the store (written by movers)
    16   8  hint: events moved into the store
    24  40  reserved (zeros)
    64   ..  records, each at an offset that is a multiple of 8:
             u32 length of the body, u32 crc32 of the body, body, padding

A length of 0 ends what was written (the file is preallocated with zeros).
The writer copies the body first and the length last, as one aligned 8-byte
store: a reader never sees a length whose body is not complete, and a
record torn by a crash (or by a disk error) fails its checksum and ends the
segment there. Bodies start with their kind:

* ``M``: the segment's meta (JSON): the session, collection header and
  destination its events belong to, their schema, and whether the writer's
  own process moves them (``self``) or leaves them to others;
* ``E``: one event: ``varint(len(head)) + head + tail``, its ``Payload``
  fields before and after ``nr`` (see :func:`~hamustro_logging.wire.journal_body`);
* ``Z``: the writer sealed the segment; nothing follows.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import secrets
import stat
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from .folder import UnsafeQueueFolder, open_private

__all__ = [
    "JOURNAL_DIR",
    "SEGMENT_BYTES",
    "START",
    "JournalMeta",
    "JournalWriter",
    "Segment",
    "open_segment",
    "segment_names",
    "unmoved_events",
]

MAGIC = b"HAMJRNL1"
#: The folder of the queue folder that holds the segments.
JOURNAL_DIR = "journal"
#: Where records start in a segment.
START = 64
#: Size of a segment: preallocated at once, so a full disk refuses a new
#: segment (and the handler's ``on_full`` applies) instead of faulting a
#: write into a page that has no block behind it (SIGBUS).
SEGMENT_BYTES = 4 << 20
SUFFIX = ".jnl"
_HEAD = struct.Struct("<II")
_HINT = struct.Struct("<QQ")
#: Room kept at the end of a segment for the seal record.
_SEAL_ROOM = 16


def _align(n: int) -> int:
    return (n + 7) & ~7


@dataclass(frozen=True)
class JournalMeta:
    """What the events of a segment belong to."""

    session: str
    header: bytes
    destination: str | None
    schema: int
    #: The writer's own process moves them (a handler with a spool thread);
    #: False: others do (an agent, or the parent of a forked child).
    moved_by_writer: bool

    def encode(self) -> bytes:
        return b"M" + json.dumps(
            {
                "session": self.session,
                "header": self.header.hex(),
                "destination": self.destination,
                "schema": self.schema,
                "self": self.moved_by_writer,
            },
            separators=(",", ":"),
        ).encode("ascii")

    @classmethod
    def decode(cls, body: bytes) -> JournalMeta:
        data = json.loads(body[1:])
        destination = data["destination"]
        meta = cls(
            str(data["session"]),
            bytes.fromhex(data["header"]),
            None if destination is None else str(destination),
            int(data["schema"]),
            bool(data["self"]),
        )
        if meta.schema not in (1, 2) or not meta.session:
            raise ValueError("journal meta names no session or an unknown schema")
        return meta


def journal_dir(queue_dir: str | os.PathLike[str]) -> str:
    return os.path.join(os.fspath(queue_dir), JOURNAL_DIR)


def _private_dir(path: str) -> None:
    """The journal folder: created 0700; refused if it is a link or others can write it."""
    open_private(os.path.dirname(path))  # the queue folder, checked (made 0700 if missing)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeQueueFolder(f"journal folder {path} is not a folder; remove it")
    if hasattr(os, "geteuid") and (st.st_uid != os.geteuid() or st.st_mode & 0o022):
        raise UnsafeQueueFolder(
            f"journal folder {path} is not this user's alone "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run `chmod 700 {path}`"
        )


class _Open:
    """A segment this writer owns: its descriptor (holding the lock), map and position."""

    def __init__(self, path: str, size: int, meta: bytes, sync: bool = False) -> None:
        # Made under another name, locked, preallocated and given its meta,
        # then renamed: a mover never sees a segment that is not ready, nor
        # one it could mistake for abandoned.
        making = path + ".new"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(making, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Blocks for the whole file now: a full disk says so here, never
            # as a SIGBUS on a later write into the map.
            os.posix_fallocate(fd, 0, size)
            self.map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self.map[0:8] = MAGIC
            self.fd = fd
            self.path = path
            self.size = size
            self.pos = START
            self.events = 0
            #: How far this process's spool moved it, as the store said (offset, events).
            self.moved_to = START
            self.moved_events_here = 0
            #: The file was removed under its writer (the queue folder was deleted):
            #: the next append starts a new segment.
            self.gone = False
            self.write(meta)
            os.rename(making, path)
            if sync:  # the new name on stable storage too
                folder_fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(folder_fd)
                finally:
                    os.close(folder_fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(making)
            raise

    def write(self, body: bytes, keep: int = _SEAL_ROOM) -> bool:
        """Write one record if it fits with ``keep`` bytes left after it; False if not.

        One call for the check and the write: it runs for every event.
        """
        n = len(body)
        pos = self.pos
        end = pos + 8 + ((n + 7) & ~7)  # (_align, inline)
        if end + keep > self.size:
            return False
        m = self.map
        m[pos + 8 : pos + 8 + n] = body
        _HEAD.pack_into(m, pos, n, zlib.crc32(body))
        self.pos = end
        return True

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def moved_events(self) -> int:
        return int(_HINT.unpack_from(self.map, 8)[1])

    def release(self) -> None:
        """Let go of the map and the lock (the segment stays for a mover to adopt)."""
        with contextlib.suppress(Exception):
            self.map.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)


class JournalWriter:
    """The segments one handler writes its events to.

    ``append`` is called under the handler's lock (one caller at a time).
    With ``meta.moved_by_writer`` (a handler with a spool thread) the
    writer keeps its sealed segments locked until its own spool moved them
    (:meth:`retire`), so it knows every number its events got; otherwise it
    lets go of a segment when it seals it, for others to adopt. ``waiting``
    is what no mover has moved yet. With ``sync`` each append is on stable
    storage before it returns (``msync``).
    """

    def __init__(
        self,
        queue_dir: str | os.PathLike[str],
        meta: JournalMeta,
        *,
        segment_bytes: int = SEGMENT_BYTES,
        sync: bool = False,
    ) -> None:
        self.directory = journal_dir(queue_dir)
        self.meta = meta
        self.segment_bytes = segment_bytes
        self.sync = sync
        self.appended = 0
        #: Events moved in by this process's spool (meta.moved_by_writer).
        self.moved = 0
        self.current: _Open | None = None
        #: Sealed, still locked, for this process's spool to move (moved_by_writer).
        self.held: list[_Open] = []
        #: Sealed and let go: (read-only map, events) to follow others' progress.
        self._watching: list[tuple[mmap.mmap, int]] = []
        self._meta_body = meta.encode()
        self._prefix = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._seq = 0

    def leave_to_others(self) -> None:
        """Segments made from now on are moved by other processes (no spool here)."""
        self._set_mover(False)

    def leave_to_writer(self) -> None:
        """Segments made from now on are moved by this process's own spool."""
        self._set_mover(True)

    def _set_mover(self, by_writer: bool) -> None:
        m = self.meta
        self.meta = JournalMeta(m.session, m.header, m.destination, m.schema, by_writer)
        self._meta_body = self.meta.encode()

    def waiting(self) -> int:
        """Events in the journal that were not moved into the store yet."""
        if self.meta.moved_by_writer:
            return self.appended - self.moved
        left = 0
        current = self.current
        if current is not None:
            left += current.events - current.moved_events()
        for entry in list(self._watching):
            hint, events = entry
            try:
                rest = events - _HINT.unpack_from(hint, 8)[1]
            except ValueError:  # closed
                rest = 0
            if rest <= 0:
                self._watching.remove(entry)
                hint.close()
            left += max(rest, 0)
        return left

    def append(self, body: bytes) -> None:
        """Write one record; raises ``OSError`` if a new segment cannot be made (a full disk)."""
        current = self.current
        if current is None or current.gone or not current.write(body):
            current = self._next_segment(len(body))
            current.write(body)  # (made with room for it)
        current.events += 1
        self.appended += 1
        if self.sync:
            # msync takes page-aligned offsets: the page(s) of this record.
            start = (current.pos - 8 - _align(len(body))) // mmap.PAGESIZE * mmap.PAGESIZE
            current.map.flush(start, current.pos - start)

    def _next_segment(self, need: int) -> _Open:
        size = max(self.segment_bytes, _align(START + 64 + len(self._meta_body) + need + 4096))
        self.seal()
        _private_dir(self.directory)  # (again each time: the folder may have been deleted)
        self._seq += 1
        path = os.path.join(self.directory, f"{self._prefix}-{self._seq:06d}{SUFFIX}")
        self.current = _Open(path, size, self._meta_body, self.sync)
        return self.current

    def seal(self) -> None:
        """Mark the current segment complete; keep it for the spool, or let others adopt it."""
        current, self.current = self.current, None
        if current is None:
            return
        with contextlib.suppress(Exception):
            current.write(b"Z", keep=0)  # (into the room kept for it)
            if self.sync:
                current.map.flush()
        if self.meta.moved_by_writer:
            self.held.append(current)
            return
        with contextlib.suppress(OSError, ValueError):
            fd = os.open(current.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:  # a descriptor of its own: no lock, just the hints
                self._watching.append((mmap.mmap(fd, START, prot=mmap.PROT_READ), current.events))
            finally:
                os.close(fd)
        current.release()

    def retire(self, segment: _Open) -> None:
        """The spool moved a sealed segment to its end: remove it and let go."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(segment.path)
        with contextlib.suppress(ValueError):
            self.held.remove(segment)
        segment.release()

    def close(self) -> None:
        """Seal, and let go of every segment: what was not moved is adopted by the next mover."""
        self.seal()
        for segment in list(self.held):
            segment.release()
        self.held.clear()

    def forget(self) -> None:
        """In a forked child: drop the parent's segments without touching them.

        The child's copies of the descriptors and maps keep the parent's
        locks alive; closing them lets the kernel drop them when the parent
        ends. Nothing is written: the segments are the parent's.
        """
        for segment in [self.current, *self.held]:
            if segment is not None:
                segment.release()
        for hint, _ in self._watching:
            with contextlib.suppress(Exception):
                hint.close()
        self.current, self.held, self._watching = None, [], []
        self._prefix = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._seq = 0
        self.appended = self.moved = 0


# -- reading (the movers) ---------------------------------------------------------


class Segment:
    """A segment opened by a mover: its map (read and hints), and whether it is adopted.

    ``adopted``: this mover holds the segment's lock (its writer is gone),
    so it moves it to the end and then removes it. Otherwise the writer is
    alive and only what it wrote so far is moved.
    """

    def __init__(
        self, path: str, fd: int | None, size: int, adopted: bool, shared: mmap.mmap | None = None
    ) -> None:
        self.path = path
        self.name = os.path.basename(path)
        self.fd = fd
        self.adopted = adopted
        if shared is not None:  # a segment of this process's own writer: its map
            self.map = shared
        else:
            assert fd is not None
            self.map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.size = size
        self.own: _Open | None = None

    @classmethod
    def of(cls, opened: _Open) -> Segment:
        """A segment this process writes, read through its writer's map."""
        segment = cls(opened.path, None, opened.size, False, opened.map)
        segment.own = opened
        return segment

    def meta(self) -> JournalMeta | None:
        """The segment's meta record, or None if it has none yet (or a damaged one)."""
        for _, kind, body in self.records(START, 1):
            if kind == "M":
                try:
                    return JournalMeta.decode(body)
                except (ValueError, KeyError, TypeError):
                    return None
            return None
        return None

    def records(self, offset: int, limit: int) -> Iterator[tuple[int, str, bytes]]:
        """Up to ``limit`` records from ``offset``: (offset after it, kind, body).

        Stops at the end of what was written, at a record that does not fit
        or fails its checksum (torn by a crash: nothing after it counts).
        """
        m, size = self.map, self.size
        while limit > 0 and offset + 8 <= size:
            n, crc = _HEAD.unpack_from(m, offset)
            if n == 0 or offset + 8 + n > size:
                return
            body = m[offset + 8 : offset + 8 + n]
            if zlib.crc32(body) != crc:
                return
            offset += 8 + _align(n)
            yield offset, chr(body[0]), body
            limit -= 1

    def events(self, offset: int, limit: int) -> tuple[int, list[bytes], bool]:
        """Up to ``limit`` event bodies from ``offset``: (offset after them, bodies, sealed).

        What :meth:`records` reads, for the movers, in one loop (it runs for
        every event): meta records are passed over; ``sealed`` is True when
        the seal was read (the offset is then after it). Stops where
        :meth:`records` stops, and before the event past ``limit``.
        """
        m, size = self.map, self.size
        unpack, crc32 = _HEAD.unpack_from, zlib.crc32
        bodies: list[bytes] = []
        append = bodies.append
        while offset + 8 <= size:
            n, crc = unpack(m, offset)
            start = offset + 8
            if n == 0 or start + n > size:
                break
            body = m[start : start + n]
            if crc32(body) != crc:
                break
            kind = body[0]
            if kind == 0x45:  # "E"
                if len(bodies) == limit:
                    break
                append(body)
            elif kind == 0x5A:  # "Z"
                return start + _align(n), bodies, True
            offset = start + _align(n)
        return offset, bodies, False

    def sealed_at(self, offset: int) -> bool:
        """True if the record at ``offset`` is the seal (or the segment is full there)."""
        for _, kind, _ in self.records(offset, 1):
            return kind == "Z"
        return offset + 8 > self.size

    def written_after(self, offset: int) -> bool:
        """True if anything was written at ``offset`` (a damaged record, not the end)."""
        return offset + 8 <= self.size and any(self.map[offset : offset + 8])

    def hint(self, moved_bytes: int, moved_events: int) -> None:
        """Tell the writer how far its segment was moved (a hint; the store holds the truth)."""
        with contextlib.suppress(ValueError, OSError):
            _HINT.pack_into(self.map, 8, moved_bytes, moved_events)

    def remove(self) -> None:
        """Adopted and moved to the end: the segment goes."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def close(self) -> None:
        if self.own is not None:  # the writer's map: the writer closes it
            return
        with contextlib.suppress(Exception):
            self.map.close()
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)  # drops the lock if this mover held it


def segment_names(queue_dir: str | os.PathLike[str]) -> list[str]:
    """The segments in a queue folder's journal, oldest first per writer."""
    try:
        names = os.listdir(journal_dir(queue_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(name for name in names if name.endswith(SUFFIX))


def open_segment(queue_dir: str | os.PathLike[str], name: str) -> Segment | None:
    """Open a segment for moving; adopt it if its writer is gone. None if it went meanwhile.

    A file that is not this user's plain, private file is refused
    (:class:`~hamustro_logging.folder.UnsafeQueueFolder`): whoever could
    write it could make the application send anything.
    """
    path = os.path.join(journal_dir(queue_dir), name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (
            hasattr(os, "geteuid") and (st.st_uid != os.geteuid() or st.st_mode & 0o077)
        ):
            raise UnsafeQueueFolder(
                f"journal segment {path} is not a private file of this user; remove it"
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            adopted = True
        except BlockingIOError:
            adopted = False
        if adopted and os.fstat(fd).st_nlink == 0:  # adopted and removed meanwhile
            os.close(fd)
            return None
        if st.st_size < START + 8 or os.pread(fd, 8, 0) != MAGIC:
            if adopted and st.st_size == 0:  # its writer died before preallocating it
                os.unlink(path)
                os.close(fd)
                return None
            if not adopted:  # being created right now
                os.close(fd)
                return None
            raise ValueError(f"journal segment {path} is not a journal segment")
        return Segment(path, fd, st.st_size, adopted)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise


def unmoved_events(
    queue_dir: str | os.PathLike[str], moved_to: Mapping[str, int | None]
) -> dict[str, int]:
    """Events written to each segment and not yet moved into the store; writes nothing.

    ``moved_to``: how far the store moved each segment (its offset), None
    for a segment the store finished (moved to its end). A segment the
    store has no row for has moved nothing yet. For ``status`` and health
    checks: the segments are only read (no lock taken, nothing adopted), so
    a writer or a mover at work is not disturbed; segments that are not
    this user's private files are passed over.
    """
    out: dict[str, int] = {}
    folder = journal_dir(queue_dir)
    for name in segment_names(queue_dir):
        if name in moved_to and moved_to[name] is None:
            continue
        try:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if (
                not stat.S_ISREG(st.st_mode)
                or (hasattr(os, "geteuid") and st.st_uid != os.geteuid())
                or st.st_size < START + 8
                or os.pread(fd, 8, 0) != MAGIC
            ):
                continue
            view = mmap.mmap(fd, st.st_size, mmap.MAP_SHARED, mmap.PROT_READ)
        except OSError:
            continue
        finally:
            os.close(fd)
        try:
            segment = Segment(os.path.join(folder, name), None, st.st_size, False, view)
            offset, count, sealed = max(START, moved_to.get(name) or 0), 0, False
            while not sealed:
                offset, bodies, sealed = segment.events(offset, 10_000)
                if not bodies:
                    break
                count += len(bodies)
            out[name] = count
        finally:
            view.close()
    return out
