"""The on-disk event queue, kept in a diskcache ``Cache`` (SQLite in WAL mode).

Several processes may open the same folder (gunicorn workers do): every
change happens inside one diskcache transaction (``BEGIN IMMEDIATE``), so
numbering, claiming and deleting are atomic across processes.

Who calls what:

* ``append`` is called by ``ClientTracker.track_event`` on the application's
  thread; ``append_journal`` and ``finish_journal`` by whoever moves journal
  segments in (:mod:`hamustro_logging.spool`: the handler's spool thread, the
  agent, the CLI);
* ``claim``, ``ack``, ``settle``, ``release`` and ``give_back`` by whoever
  sends: the handler's flusher thread, or ``ClientTracker.flush``;
* the read-only counters by anyone.

A ``Queue`` object is safe to share between threads: diskcache keeps one
SQLite connection per thread. It must not be used across ``os.fork()``: the
child opens a new one (see ``HamustroHandler``).

Keys (all ``str``; values only ``bytes``, ``str`` and ``int``, nothing is
pickled, and :class:`SafeDisk` refuses to unpickle what a tampered file holds):

=========================================  =======================================
``e/{session}/{hid}/{first_nr:010d}/{n}``  a chunk: ``n`` framed payloads (bytes)
``l/{chunk key}``                           lease on a chunk being sent: ``token|expiry_ms``
``l/w/{session}/{hid}/{n}``                 a writer of the group: its owner id (one row per
                                            Queue that registered the header)
``m/{chunk key}``                           attempts that may have reached the collector (int)
``r/{session}/{hid}/{nr:010d}/1``           an event the collector refused (bytes)
``x/{key}``                                 a row set aside as unusable, its raw bytes
``h/{session}/{hid}``                       the collection header, fields 1-7 (bytes)
``d/{session}/{hid}``                       the destination (collector and key) it is for (str)
``d/rebound/{destination}``                 the destination ``rebind`` moved its events to (str)
``n/{session}``                             last ``nr`` given in the session (int)
``u/{client_id}``                           the user set with ``set_user`` (str: JSON)
``j/{segment}``                             how far a journal segment was moved in (int, < 0: done)
``s/pending``, ``s/pending_bytes``          unsent events and their bytes (int)
``s/last_sync``                             epoch milliseconds of the last 200 (int)
``s/rejected``, ``s/aside``                 rows in ``r/`` and in ``x/`` (int)
``s/salvage/{file name}``                   a set-aside database being carried: rowid read to (int)
``s/ledger/{count}``                        the folder's lifetime counts (int; ``ledger.py``)
=========================================  =======================================

``hid`` is a short hash of the destination and the header, so events keep
the header they were logged with, and a sender only ever sends what was
logged for its own collector and key. Chunk keys sort by session, header and
``nr``.

How sending is shared out (:meth:`Queue.claim`):

* **Turns.** Each claim starts at the group (session and header) after the
  one this object claimed last, so a group that keeps failing, or a huge
  backlog of one session, never starves the others.
* **Leases.** A claimed chunk gets a lease ``token|expiry``. It is free again
  when it expires or, at once, when its owner is a process of this host that
  no longer runs. The owner may still settle it after expiry, as long as no
  one else took it over (the token is compared, not the clock). Senders bound
  every request well under the lease (``Transport.max_duration``).
* **Attempts.** A claim counts an attempt on each chunk *before* the request
  goes out, so after a crash mid-send the next delivery is known to be a
  possible duplicate. A claim of a chunk that carries an attempt already
  counts its events in the ledger's ``resent`` at once (a process that dies
  mid-send leaves the count behind); an answer that says nothing was stored
  (``retry.possibly_stored``) takes the attempt and that count back.
* **The ledger.** Every change of an event's state updates the folder's
  lifetime counts (``ledger.py``) in the same transaction: ``append``
  (stored, dropped), ``settle`` (sent, rejected), setting rows aside
  (set_aside), ``retry_rejected`` (retried); :meth:`Queue.add_to_ledger`
  lets the handler add what it dropped before the store.
* **Damage.** A row the library cannot use (a malformed key, a chunk that is
  not a run of payloads, a pickle, a group whose header is missing or does not
  match its hash) is moved to ``x/`` (counted, exportable) and the claim goes
  on with the rest. A group whose header row is missing while a writer of it
  still runs (``l/w/`` rows) is not damage: it is left alone (its writer
  still sends it with the header it holds). Counters that cannot be read are rebuilt from the rows.
  A database SQLite reports as corrupt is set aside and what can be read of it
  is carried into a fresh one, a bounded slice at a time (:meth:`Queue._salvage`).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import functools
import json
import os
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import (
    Callable,
    Collection,
    Container,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import diskcache
import diskcache.core

from . import folder
from .ledger import LEDGER_PREFIX, SINCE, Ledger, ledger_key
from .owners import lease_held, new_owner, token_owner, writer_alive
from .salvage import SALVAGE_SECONDS, known_numbers, read_slice, rows_with
from .sendlock import SendLock
from .wire import UINT32_MAX, count_frames, encode_payloads, iter_frames, md5hex, number_bodies

__all__ = [
    "NUMBER_GAP",
    "Appended",
    "Batch",
    "DiskSpaceLow",
    "Fate",
    "Queue",
    "QueueBusy",
    "QueueCorrupt",
    "QueueFull",
    "QueueUnusableHere",
    "SafeDisk",
    "SessionInfo",
    "Settled",
    "disk_full",
    "lease_held",
    "new_owner",
    "parse_chunk_key",
    "summarize_sessions",
]

_PENDING = "s/pending"
_PENDING_BYTES = "s/pending_bytes"
_LAST_SYNC = "s/last_sync"
_REJECTED = "s/rejected"
_ASIDE = "s/aside"
#: Followed by a set-aside file's name: the rowid up to which it has been carried.
_SALVAGE = "s/salvage/"
#: Between two slices of a salvage at claims: this many times ``salvage_seconds``
#: (a sender spends at most about a tenth of its time on it).
_SALVAGE_PAUSE = 10
_DB = "cache.db"
#: How far numbering jumps in a database found behind the numbers a process
#: knows (see Queue._carry_numbers): more than any app hands out between two
#: looks at its folder, far less than the 4,294,967,295 an nr can reach.
NUMBER_GAP = 1_000_000
#: How long the row of a journal segment moved to its end is kept (see
#: Queue.finish_journal): far longer than any mover keeps a segment open.
_FINISHED_KEPT_MS = 24 * 3600 * 1000
#: Every key this library writes starts with one of these (see the table above).
KEY_PREFIXES = ("e/", "l/", "m/", "r/", "x/", "h/", "d/", "n/", "s/", "u/", "j/")

#: SQLite settings. ``eviction_policy='none'``: diskcache is a cache and by
#: default evicts old items past 1 GB; a queue must never do that. Small page
#: cache and no mmap keep resident memory flat with a large backlog.
_SETTINGS: dict[str, Any] = {
    "eviction_policy": "none",
    "statistics": 0,
    "tag_index": 0,
    # No culling on every write: nothing here expires by itself.
    "cull_limit": 0,
    "sqlite_mmap_size": 0,
    "sqlite_cache_size": 2048,
    # The write-ahead log is copied into the database every 128 pages (512
    # KiB; SQLite's default is 4 MiB) and shrinks back to 512 KiB after that:
    # its growth stays well inside the free-space floor, so deletes (which
    # write to it) still fit on a disk the queue filled to the floor.
    "sqlite_wal_autocheckpoint": 128,
    "sqlite_journal_size_limit": 512 << 10,
    # Every value stays inside cache.db (0600): diskcache would write a value
    # of this size or more to a file of its own, with the umask's modes.
    "disk_min_file_size": 1 << 62,
}


class QueueCorrupt(ValueError):
    """The queue folder holds something this library never writes."""


class QueueFull(RuntimeError):
    """The queue holds ``max_queue_events`` / ``max_queue_bytes`` unsent; the event was refused."""


class QueueUnusableHere(RuntimeError):
    """This process must not open the queue's database (see ``sqlite_usable_after_fork``)."""


class QueueBusy(diskcache.Timeout):
    """Another process held the queue's write lock longer than the caller would wait."""


class DiskSpaceLow(OSError):
    """The disk of the queue folder has less free space than ``min_free_bytes``.

    New events are refused so that the queue never takes the last of the
    disk: sending (which needs a little space for leases and deletes) keeps
    working, and sending is what frees space.
    """


class SafeDisk(diskcache.Disk):
    """A diskcache ``Disk`` that stores only bytes, str and int, and never unpickles.

    diskcache pickles anything else, and unpickles whatever a row says is a
    pickle: a tampered queue file could then run code. Here both directions
    refuse.
    """

    def put(self, key: Any) -> tuple[Any, bool]:
        if type(key) not in (str, bytes, int):
            raise TypeError(f"queue keys are str, bytes or int, not {type(key).__name__}")
        return super().put(key)

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise QueueCorrupt("queue file holds a pickled key; refusing to unpickle it")
        return super().get(key, raw)

    def store(
        self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN
    ) -> tuple[int, int, str | None, Any]:
        if read or type(value) not in (str, bytes, int):
            raise TypeError(f"queue values are str, bytes or int, not {type(value).__name__}")
        return super().store(value, read, key=key)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode == diskcache.core.MODE_PICKLE:
            raise QueueCorrupt("queue file holds a pickled value; refusing to unpickle it")
        return super().fetch(mode, filename, value, read)


@dataclass(frozen=True)
class Batch:
    """Chunks of one session claimed for one request.

    ``header`` + ``data`` is the complete ``Collection``: the header's
    fields 1-7, then the stored payload frames, concatenated.
    """

    session: str
    hid: str
    keys: tuple[str, ...]
    header: bytes
    data: bytes
    count: int
    token: str
    #: False: claimed in memory, no lease written (a full disk; see ``Queue.claim``).
    leased: bool = True

    @property
    def body(self) -> bytes:
        return self.header + self.data

    def frames(self) -> list[tuple[int, bytes]]:
        """Each payload of the batch with its ``nr`` (chunks hold consecutive numbers)."""
        numbers = [
            nr
            for key in self.keys
            for first, n in [_parse_chunk_key(key)[2:]]
            for nr in range(first, first + n)
        ]
        return list(zip(numbers, iter_frames(self.data), strict=True))


@dataclass(frozen=True)
class Appended:
    """What :meth:`Queue.append` did: numbers given, events stored and refused."""

    first_nr: int
    last_nr: int
    stored: int
    dropped: int


@dataclass(frozen=True)
class Settled:
    """What :meth:`Queue.ack` and :meth:`Queue.settle` did."""

    sent: int = 0
    resent: int = 0
    rejected: int = 0


@dataclass(frozen=True)
class Fate:
    """Where the events ``first``..``last`` of a session are now (:meth:`Queue.fates`).

    ``pending``: still to send (leased ones included); ``rejected``: in the
    rejected area (refused by the collector); ``set_aside``: in a row set
    aside as unusable. The rest of the range was delivered (a 200 deleted
    it), unless the database was set aside as corrupt since (the ledger's
    ``set_aside`` grew then) or the folder was deleted.
    """

    first: int
    last: int
    pending: int = 0
    rejected: int = 0
    set_aside: int = 0

    @property
    def delivered(self) -> int:
        return self.last - self.first + 1 - self.pending - self.rejected - self.set_aside


@dataclass(frozen=True)
class SessionInfo:
    """What ``Queue.sessions`` reports of one session's unsent events."""

    session: str
    pending: int
    leased: int
    bytes: int
    oldest_nr: int


#: Every use of SQLite by a Queue in this process happens under this lock: this
#: process's threads take turns at the database instead of busy-waiting inside
#: SQLite. Reentrant: a method may call another. It is never taken around
#: ``os.fork()`` (a lock there is one more thing a thread can break); instead a
#: forked child looks at it: held by a parent thread at the fork, it means that
#: thread was inside SQLite, whose process-wide mutexes the child then
#: inherited held, so the child must never call SQLite
#: (:func:`sqlite_usable_after_fork`). Its events reach the store through its
#: journal, moved by the parent or an agent.
_fork_gate = threading.RLock()
_sqlite_usable = True


def _after_fork_in_child() -> None:
    global _fork_gate, _sqlite_usable
    # The forking thread is the only one left; it was not inside SQLite (it
    # was forking), so the gate is free unless another thread held it.
    if _fork_gate.acquire(blocking=False):
        _fork_gate.release()
    else:
        _sqlite_usable = False
    _fork_gate = threading.RLock()


def sqlite_usable_after_fork() -> bool:
    """False in a process forked while one of the parent's threads was inside SQLite.

    (Or a descendant of one.) Such a child never opens the queue's
    database: SQLite's process-wide mutexes may be held forever there.
    """
    return _sqlite_usable


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

_F = TypeVar("_F", bound=Callable[..., Any])

#: The writer ids of this process's open queues (a closed or collected Queue
#: writes no more): what ``owners.writer_alive`` asks about this process.
_OPEN_WRITERS: weakref.WeakValueDictionary[str, Queue] = weakref.WeakValueDictionary()

#: How long one attempt at the write lock may wait inside SQLite, holding the
#: fork gate; between attempts the thread waits outside it.
_SLICE = 0.02


class _Cache(diskcache.Cache):
    """diskcache's ``Cache``, whose writes outside a transaction wait a bounded time.

    diskcache writes its settings at every open, retrying "database is
    locked" for up to 60 s; here the retries stop at ``open_until`` (a
    ``time.monotonic()`` value, with ``QueueBusy``) and wait outside the fork
    gate, like :meth:`Queue._transaction`.
    """

    def __init__(self, directory: str, *, open_until: float, folder: str, **kwargs: Any) -> None:
        self._open_until = open_until
        self._folder = folder
        super().__init__(directory, **kwargs)

    @property
    def _sql_retry(self) -> Callable[..., Any]:
        sql = self._sql

        def execute(statement: str, *args: Any, **kwargs: Any) -> Any:
            pause = 0.001
            while True:
                try:
                    return sql(statement, *args, **kwargs)
                except sqlite3.OperationalError as exc:
                    if str(exc) != "database is locked":
                        raise
                    if time.monotonic() >= self._open_until:
                        raise QueueBusy(
                            f"the queue database in {self._folder} was locked by another "
                            "process while it was being opened"
                        ) from None
                _outside_gate(pause)
                pause = min(pause * 2, 0.05)

        return execute


def _outside_gate(seconds: float) -> None:
    """Sleep with the fork gate released (all of this thread's holds), then take it back."""
    state = _fork_gate._release_save()  # type: ignore[attr-defined]  # as Condition.wait does
    try:
        time.sleep(seconds)
    finally:
        _fork_gate._acquire_restore(state)  # type: ignore[attr-defined]


#: A chunk written one event at a time grows by rewriting it: only up to this
#: size (about 60 typical events), so an append stays a small write.
_TAIL_BYTES = 4096
#: Keys read per query while walking the chunks.
_PAGE = 64


def _gated(method: _F) -> _F:
    """Run ``method`` under the fork gate; a corrupt database is salvaged and the call retried.

    Only the outermost call of a thread does the salvage, never one nested in
    another method's transaction.
    """

    @functools.wraps(method)
    def gated(self: Queue, *args: Any, **kwargs: Any) -> Any:
        local = self._local
        with self._gate():
            outer = not getattr(local, "depth", 0)
            local.depth = getattr(local, "depth", 0) + 1
            try:
                return method(self, *args, **kwargs)
            except sqlite3.DatabaseError as exc:
                if not (outer and _is_corruption(exc)):
                    raise
                error = str(exc)
            finally:
                local.depth -= 1
            self._salvage(error)
            return method(self, *args, **kwargs)

    return cast(_F, gated)


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the user's quota) is full.

    SQLite's "database or disk is full" (SQLITE_FULL), or an ``OSError``
    with ENOSPC or EDQUOT.
    """
    if isinstance(exc, sqlite3.OperationalError):
        return getattr(exc, "sqlite_errorcode", None) == 13 or "disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _is_corruption(exc: BaseException) -> bool:
    """SQLite's "database disk image is malformed" / "file is not a database".

    Locks, a full disk, I/O errors and a read-only file are
    ``OperationalError``: passing troubles, not damage.
    """
    return type(exc) is sqlite3.DatabaseError


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _chunk_key(session: str, hid: str, first_nr: int, count: int) -> str:
    return f"e/{session}/{hid}/{first_nr:010d}/{count}"


def _after(prefix: str) -> str:
    """The smallest string greater than every string starting with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _runs(items: Sequence[tuple[int, bytes]]) -> Iterator[tuple[int, list[bytes]]]:
    """Group (nr, frame) pairs into runs of consecutive numbers."""
    run: list[bytes] = []
    first = expected = 0
    for nr, frame in items:
        if run and nr != expected:
            yield first, run
            run = []
        if not run:
            first = nr
        run.append(frame)
        expected = nr + 1
    if run:
        yield first, run


def _parse_chunk_key(key: str) -> tuple[str, str, int, int]:
    _, session, hid, first_nr, count = key.split("/")
    return session, hid, int(first_nr), int(count)


def parse_chunk_key(key: str) -> tuple[str, str, int, int] | None:
    """A chunk (or rejected) key's parts, or None if the key is not one we write."""
    try:
        session, hid, first, n = _parse_chunk_key(key)
    except ValueError:
        return None
    if not session or not hid or first < 1 or n < 1:
        return None
    return session, hid, first, n


def _frame_count(value: bytes) -> int:
    """How many payload frames ``value`` holds; -1 if it is not a run of frames."""
    return count_frames(value)


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


def summarize_sessions(
    chunks: Iterable[tuple[str, int | None]], get: Callable[[str], object]
) -> list[SessionInfo]:
    """Per session: unsent and leased events, bytes and the oldest ``nr``.

    ``chunks`` are (chunk key, bytes) pairs; ``get`` reads a row (for the
    leases). Shared by :class:`Queue` and the read-only reader.
    """
    out: dict[str, list[int]] = {}
    now, gone = _now_ms(), dict[str, bool]()
    for key, length in chunks:
        parsed = parse_chunk_key(key)
        if parsed is None:
            continue
        session, _, first_nr, n = parsed
        info = out.setdefault(session, [0, 0, 0, first_nr])
        info[0] += n
        with contextlib.suppress(QueueCorrupt):
            if lease_held(get("l/" + key), now, gone):
                info[1] += n
        info[2] += length or 0
        info[3] = min(info[3], first_nr)
    return [SessionInfo(s, *v) for s, v in out.items()]


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Queue:
    """The durable queue of one folder.

    >>> import tempfile
    >>> from hamustro_logging.wire import Event
    >>> q = Queue(tempfile.mkdtemp())
    >>> hid = q.register_header("sess", b"\\x0a\\x01d")
    >>> q.append("sess", hid, [Event(1, b"a"), Event(2, b"b")])
    Appended(first_nr=1, last_nr=2, stored=2, dropped=0)
    >>> batch = q.claim("me", lease_seconds=60)
    >>> batch.count, q.pending_count()
    (2, 2)
    >>> q.ack(batch), q.pending_count()
    (Settled(sent=2, resent=0, rejected=0), 0)
    >>> q.close()

    ``carry_numbers`` (session -> last ``nr``) are numbers handed out before,
    in a folder that was since deleted or set aside: numbering goes on after
    them, never reusing one. ``notify`` gets a line when the queue repairs
    itself (a row set aside, a database salvaged).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        chunk_events: int = 500,
        chunk_bytes: int = 32 * 1024,
        max_events: int = 10_000_000,
        max_bytes: int = 1 << 30,
        min_free_bytes: int = 0,
        timeout: float = 10.0,
        carry_numbers: Mapping[str, int] | None = None,
        notify: Callable[[str], None] | None = None,
        open_timeout: float | None = None,
        salvage_seconds: float = SALVAGE_SECONDS,
    ) -> None:
        self.directory = os.fspath(directory)
        self.chunk_events = chunk_events
        self.chunk_bytes = chunk_bytes
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.timeout = timeout
        self._tell = notify or (lambda line: None)
        #: Per thread: nesting of gated calls and of gate holds, busy_timeout,
        #: and the notices to say once the gate is released.
        self._local = threading.local()
        self._tail: tuple[str, int] | None = None  # the last chunk written: key, bytes
        self._cursor = "e/"  # claims start after this key: each group takes its turn
        self._headers: dict[tuple[str, str], tuple[bytes, str | None]] = {}
        self._foreign: set[tuple[str, str]] = set()  # groups of another destination, reported
        self._damaged = False  # a row was set aside in this call: counters to rebuild
        self._registered: dict[tuple[str, str], tuple[bytes, str | None]] = {}
        #: The last nr this object handed out or saw, per session (never reused).
        self._known: dict[str, int] = dict(carry_numbers or {})
        self.salvage_seconds = salvage_seconds
        #: A set-aside database may still hold rows to carry (looked at when
        #: opening, then at claims, no more often than each ``_salvage_at``).
        self._salvaging = True
        self._salvage_at = 0.0
        #: This object's id as a writer of the groups it registers (``l/w/`` rows).
        self.writer = new_owner()
        _OPEN_WRITERS[self.writer] = self
        self._folder_id = folder.open_private(self.directory)  # refuses a folder others can write
        self._send_lock = SendLock(self.directory)
        self._open_deadline = time.monotonic() + (timeout if open_timeout is None else open_timeout)
        with self._gate():
            try:
                self._cache = self._open_cache()
            except sqlite3.DatabaseError as exc:
                if not _is_corruption(exc):
                    raise
                self._db_id = _file_id(self._path)
                self._salvage(str(exc))
            self._carry_numbers()
            self._resume_salvage()

    def _notify(self, line: str) -> None:
        """Say ``line`` once this thread has released the fork gate.

        Never while holding it: the notice goes to stderr, which an app may
        route into ``logging``, whose handlers (ours included) take locks of
        their own; a thread waiting for one of them must not hold the gate
        that another thread, holding it, waits for.
        """
        notices = getattr(self._local, "notices", None)
        if notices is None:
            notices = self._local.notices = []
        notices.append(line)

    @contextlib.contextmanager
    def _gate(self) -> Iterator[None]:
        """Hold the fork gate; notices gathered meanwhile are said after the last release."""
        local = self._local
        local.hold = getattr(local, "hold", 0) + 1
        try:
            with _fork_gate:
                yield
        finally:
            local.hold -= 1
            notices = getattr(local, "notices", None)
            if not local.hold and notices:
                local.notices = []
                for line in notices:
                    self._tell(line)

    @property
    def _path(self) -> str:
        return os.path.join(self.directory, _DB)

    def _open_cache(self) -> diskcache.Cache:
        cache = _Cache(
            self.directory,
            timeout=_SLICE,
            disk=SafeDisk,
            open_until=self._open_deadline,
            folder=self.directory,
            **_SETTINGS,
        )
        self._cache = cache
        # A brand-new queue counts retention from its creation, so it does not
        # send on every event before its first sync.
        with self._transaction():
            cache.add(_LAST_SYNC, _now_ms())
            if cache.add(SINCE, _now_ms()):
                # The ledger begins (a new folder, or one of a version without
                # it): what is pending now is what it was stored with.
                self._reconcile_ledger()
        self._db_id = _file_id(self._path)
        # The database and its WAL files exist now: 0600, and still in the same folder.
        try:
            folder.seal(self.directory, self._folder_id)
        except Exception:
            cache.close()
            raise
        return cache

    def _carry_numbers(self) -> None:
        """Numbering in this folder goes on after every number known to have been handed out.

        A counter behind what this process knows means the database is new
        (the folder was wiped, or a corrupt one set aside): other processes
        of the app may have handed out numbers this one never saw, so the
        counter jumps ``NUMBER_GAP`` past what it knows. The first process to
        reopen sets the jump; the others find the counter ahead and go on
        from it.
        """
        if not self._known:
            return
        with self._transaction():
            for session, last in self._known.items():
                if (self._int(f"n/{session}") or 0) < last:
                    self._cache.set(f"n/{session}", min(last + NUMBER_GAP, UINT32_MAX // 2))

    def replaced(self) -> bool:
        """True if the folder's database is no longer the file this object opened.

        (The folder was deleted, or another process set a corrupt database
        aside.) SQLite would otherwise go on writing into a deleted file.
        """
        return _file_id(self._path) != self._db_id

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """A diskcache transaction (``BEGIN IMMEDIATE``), under the fork gate.

        While another process holds the write lock, SQLite is asked again and
        again for ``_SLICE`` seconds at a time, and between the attempts this
        thread waits *outside* the fork gate: a fork, and this process's other
        threads, never wait for another process's lock. It gives up after the
        caller's ``busy_timeout`` (``QueueBusy``), or the queue's ``timeout``.
        """
        wait = getattr(self._local, "busy_timeout", None)
        limit = self.timeout if wait is None else wait
        deadline = time.monotonic() + limit
        pause = 0.001
        with self._gate():
            while True:
                transaction = self._cache.transact()
                try:
                    transaction.__enter__()
                    break
                except diskcache.Timeout:
                    if time.monotonic() >= deadline:
                        raise QueueBusy(
                            f"the queue database in {self.directory} was locked by another "
                            f"process for over {limit:g} s"
                        ) from None
                _outside_gate(min(pause, max(0.0, deadline - time.monotonic())))
                # Short pauses: a lock another process holds for a moment (a
                # sibling worker's transaction) is picked up soon after.
                pause = min(pause * 2, 0.005)
            try:
                yield
            except BaseException:
                if not transaction.__exit__(*sys.exc_info()):
                    raise
            else:
                transaction.__exit__(None, None, None)

    def _sql(self, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        # diskcache has no range query; its own table and index serve one
        # (the unique index on (key, raw) orders str keys).
        rows: list[Any] = self._cache._sql(statement, params).fetchall()
        return rows

    def _range(self, lo: str, hi: str, limit: int = _PAGE) -> list[str]:
        """Up to ``limit`` str keys ``k`` with ``lo < k < hi``, in order."""
        rows = self._sql(
            "SELECT key FROM Cache WHERE key > ? AND key < ? AND raw = 1 ORDER BY key LIMIT ?",
            (lo, hi, limit),
        )
        return [key for (key,) in rows]

    def _keys_with(self, prefix: str) -> Iterator[str]:
        lo, hi = prefix, _after(prefix)
        while True:
            keys = self._range(lo, hi, 256)
            yield from keys
            if len(keys) < 256:
                return
            lo = keys[-1]

    # -- counters ----------------------------------------------------------------

    def _int(self, key: str, default: int = 0) -> int | None:
        """An int row, or None if the row holds something else (tampering)."""
        try:
            value = self._cache.get(key, default)
        except QueueCorrupt:
            return None
        return value if type(value) is int else None

    def _counter(self, key: str) -> int:
        value = self._int(key)
        if value is None:
            with self._transaction():
                self._rebuild_counters()
            value = self._int(key)
        return value or 0

    def _bump(self, pending: int = 0, size: int = 0, rejected: int = 0, aside: int = 0) -> None:
        """Add to the counters (inside a transaction, after the rows changed)."""
        try:
            for key, delta in (
                (_PENDING, pending),
                (_PENDING_BYTES, size),
                (_REJECTED, rejected),
                (_ASIDE, aside),
            ):
                if delta:
                    self._cache.incr(key, delta)
        except (QueueCorrupt, TypeError):
            self._rebuild_counters()

    def _rebuild_counters(self) -> None:
        """Count again what the rows hold (inside a transaction): a counter was unreadable."""
        pending = size = rejected = aside = 0
        rows = self._sql(
            "SELECT key, length(value) FROM Cache WHERE key > 'e/' AND key < 'e0' AND raw = 1"
        )
        for key, length in rows:
            parsed = parse_chunk_key(key)
            if parsed is not None:
                pending += parsed[3]
                size += length or 0
        rejected = sum(1 for _ in self._keys_with("r/"))
        aside = sum(1 for _ in self._keys_with("x/"))
        for key, value in (
            (_PENDING, pending),
            (_PENDING_BYTES, size),
            (_REJECTED, rejected),
            (_ASIDE, aside),
        ):
            self._cache.set(key, value)
        if self._int(_LAST_SYNC) is None:
            self._cache.set(_LAST_SYNC, _now_ms())
        self._notify(f"rebuilt the counters of the queue in {self.directory} from its rows")

    # -- the ledger (ledger.py) ---------------------------------------------------

    def _book(self, counts: Mapping[str, int]) -> None:
        """Add to the ledger (inside a transaction, with the rows the counts are about)."""
        for name, delta in counts.items():
            if not delta:
                continue
            key = ledger_key(name)
            try:
                self._cache.incr(key, delta, default=0)
            except (QueueCorrupt, TypeError):  # a tampered row: counting starts again from here
                self._cache.set(key, max(delta, 0))

    def _ledger_rows(self) -> dict[str, object]:
        rows = self._sql(
            "SELECT key FROM Cache WHERE key > ? AND key < ? AND raw = 1",
            (LEDGER_PREFIX, _after(LEDGER_PREFIX)),
        )
        out: dict[str, object] = {}
        for (key,) in rows:
            with contextlib.suppress(QueueCorrupt):
                out[key] = self._cache.get(key)
        return out

    def _reconcile_ledger(self) -> None:
        """Make the store side of the ledger add up again (inside a transaction).

        Called when counting begins in a folder that already holds events, and
        after a corrupt database was set aside: events the ledger says were
        stored but no row holds any more were left in the database set aside
        (``set_aside``); rows the ledger does not know (it began after them,
        or its rows could not be read) count as ``stored``.
        """
        ledger = Ledger.from_rows(self._ledger_rows())
        missing = ledger.unaccounted(self._int(_PENDING) or 0)
        if missing > 0:
            self._book({"set_aside": missing})
        elif missing < 0:
            self._book({"stored": -missing})

    @_gated
    def add_to_ledger(self, counts: Mapping[str, int]) -> None:
        """Add ``counts`` to the folder's ledger: names as in ``ledger.py`` (``"dropped/closed"``).

        For the handler, which drops events before they reach the store (a
        bad field, a full buffer, close). In a transaction of its own, or in
        the caller's when called inside one (diskcache's are reentrant), so
        the counts change with the rows they are about. Raises ``ValueError``
        for a name the ledger does not have, and for a negative count.

        >>> import tempfile
        >>> q = Queue(tempfile.mkdtemp())
        >>> q.add_to_ledger({"dropped/invalid": 2})
        >>> q.ledger().dropped
        {'invalid': 2}
        >>> q.close()
        """
        for name, delta in counts.items():
            ledger_key(name)
            if delta < 0:
                raise ValueError(f"a ledger count only grows: {name} {delta}")
        with self._transaction():
            self._book(counts)

    @_gated
    def ledger(self) -> Ledger:
        """The folder's lifetime counts (every process's; see ``ledger.py``)."""
        return Ledger.from_rows(self._ledger_rows())

    def _last_nr(self, session: str) -> int:
        """The session's last nr: its counter, else the highest stored or known (never less)."""
        value = self._int(f"n/{session}")
        highest = self._known.get(session, 0)
        if value is None:
            for prefix in (f"e/{session}/", f"r/{session}/", f"x/e/{session}/"):
                for key in self._keys_with(prefix):
                    parsed = parse_chunk_key(key.removeprefix("x/"))
                    if parsed is not None:
                        highest = max(highest, parsed[2] + parsed[3] - 1)
            return highest
        return max(value, highest)

    # -- writing ---------------------------------------------------------------

    @_gated
    def register_header(
        self,
        session: str,
        header: bytes,
        destination: str | None = None,
        *,
        busy_timeout: float | None = None,
    ) -> str:
        """Store a session's collection header; return its id for :meth:`append`.

        ``destination`` names the collector and key the events are for; only
        a sender for that destination claims them.
        """
        if destination is None:
            hid = md5hex(header)[:8]
        else:
            hid = md5hex(destination.encode() + b"\0" + header)[:8]
        with self._busy_timeout(busy_timeout), self._transaction():
            if destination is not None:
                self._cache.add(f"d/{session}/{hid}", destination)
            self._cache.add(f"h/{session}/{hid}", header)
            self._register_writer(session, hid)
        # Known good from here on: a row of it damaged later is not a reason
        # to set this process's own events aside.
        self._headers[(session, hid)] = self._registered[(session, hid)] = (header, destination)
        return hid

    def _register_writer(self, session: str, hid: str) -> None:
        """Name this object a writer of the group; forget writers that ended (in a transaction)."""
        _OPEN_WRITERS[self.writer] = self
        mine = f"l/w/{session}/{hid}/{self.writer.rsplit(':', 1)[-1]}"
        for key in list(self._keys_with(f"l/w/{session}/{hid}/")):
            try:
                owner = self._cache.get(key)
            except QueueCorrupt:
                owner = None
            if key != mine and not (isinstance(owner, str) and writer_alive(owner, _OPEN_WRITERS)):
                self._cache.delete(key)
        self._cache.set(mine, self.writer)

    def _has_live_writer(self, session: str, hid: str) -> bool:
        """Whether a queue object that registered this group may still write to it."""
        for key in self._keys_with(f"l/w/{session}/{hid}/"):
            try:
                owner = self._cache.get(key)
            except QueueCorrupt:
                continue
            if isinstance(owner, str) and writer_alive(owner, _OPEN_WRITERS):
                return True
        return False

    def _check_space(self) -> None:
        """Refuse to write under ``min_free_bytes`` free (SQLite's free pages count as free)."""
        if not self.min_free_bytes:
            return
        st = os.statvfs(self.directory)
        free = st.f_bavail * st.f_frsize
        if free >= self.min_free_bytes:
            return
        # The write-ahead log keeps what it grew to until it is checkpointed:
        # give that back to the disk before refusing.
        with contextlib.suppress(sqlite3.Error):
            self._sql("PRAGMA wal_checkpoint(TRUNCATE)")
        st = os.statvfs(self.directory)
        free = st.f_bavail * st.f_frsize
        ((pages,),) = self._sql("PRAGMA freelist_count")
        ((page_size,),) = self._sql("PRAGMA page_size")
        if free + pages * page_size < self.min_free_bytes:
            raise DiskSpaceLow(
                f"only {free // 1024} KiB free on the disk of {self.directory}, under the "
                f"{self.min_free_bytes // 1024} KiB floor (min_free_bytes): new events are "
                "not stored until space is freed"
            )

    @contextlib.contextmanager
    def _busy_timeout(self, seconds: float | None) -> Iterator[None]:
        """This thread's transactions give up after ``seconds`` of another process's lock."""
        if seconds is None:
            yield
            return
        self._local.busy_timeout = seconds
        try:
            yield
        finally:
            self._local.busy_timeout = None

    @_gated
    def append(
        self,
        session: str,
        hid: str,
        events: Sequence[Any],
        default_ip: bytes | None = None,
        *,
        busy_timeout: float | None = None,
        encode: Callable[[Sequence[Any], int, bytes | None], list[bytes]] = encode_payloads,
    ) -> Appended:
        """Number and store ``events``.

        The numbers come from one counter per session, taken in a short
        transaction of its own, so they are unique even when several
        processes share the folder; the events are encoded outside any
        transaction and stored in a second one. (A crash between the two
        leaves a gap in ``nr``, never a duplicate.) When the queue is full
        (``max_events`` unsent events or ``max_bytes`` of them) the events
        that do not fit are refused and counted in ``Appended.dropped``:
        new events are refused rather than old ones deleted, so what is
        stored stays until the collector has it.

        ``encode`` frames the events of the session's schema (schema 1's
        :func:`~hamustro_logging.wire.encode_payloads` by default), numbered
        from the given ``nr`` on.

        Raises :class:`DiskSpaceLow` under the free-space floor and
        :class:`QueueBusy` when another process holds the write lock for
        more than ``busy_timeout`` seconds (None: the queue's ``timeout``).
        """
        self._check_space()
        with self._busy_timeout(busy_timeout):
            with self._transaction():
                cache = self._cache  # read under the gate: a salvage may have replaced it
                room = self.max_events - self._counter(_PENDING)
                room_bytes = self.max_bytes - self._counter(_PENDING_BYTES)
                count = max(0, min(len(events), room))
                first = self._last_nr(session) + 1
                if count:
                    if first + count - 1 > UINT32_MAX:
                        raise OverflowError(
                            f"session {session} has used every nr up to {UINT32_MAX}"
                        )
                    cache.set(f"n/{session}", first + count - 1)
                    self._known[session] = first + count - 1
            frames = encode(events[:count], first, default_ip)
            size = 0
            for i, frame in enumerate(frames):
                size += len(frame)
                if size > room_bytes:
                    del frames[i:]
                    size -= len(frame)
                    break
            dropped = len(events) - len(frames)
            if frames or dropped:
                with self._transaction():
                    if frames:
                        if not self._extend_tail(session, hid, first, frames, size):
                            self._put_chunks(session, hid, first, frames)
                        self._bump(pending=len(frames), size=size)
                    self._book({"stored": len(frames), "dropped/queue_full": dropped})
        _OPEN_WRITERS[self.writer] = self  # writing again after close()
        return Appended(first, first + len(frames) - 1, len(frames), dropped)

    def _put_chunks(
        self, session: str, hid: str, first_nr: int, frames: Sequence[bytes], attempts: int = 0
    ) -> None:
        """Store frames numbered from ``first_nr`` on, in chunks of bounded size."""
        start = size = 0
        cache = self._cache
        for i, frame in enumerate(frames):
            if i > start and (
                i - start >= self.chunk_events or size + len(frame) > self.chunk_bytes
            ):
                key = _chunk_key(session, hid, first_nr + start, i - start)
                cache.set(key, b"".join(frames[start:i]))
                if attempts:
                    cache.set("m/" + key, attempts)
                start, size = i, 0
            size += len(frame)
        key = _chunk_key(session, hid, first_nr + start, len(frames) - start)
        cache.set(key, b"".join(frames[start:]))
        if attempts:
            cache.set("m/" + key, attempts)
        self._tail = (key, size)

    def _extend_tail(
        self, session: str, hid: str, first_nr: int, frames: Sequence[bytes], size: int
    ) -> bool:
        """Add ``frames`` to the chunk this object wrote last, if they belong there.

        A durable ``emit`` (or a quiet app) writes one event at a time; one
        chunk per event would make every claim and delete of a batch touch
        hundreds of keys. So the last chunk grows while its numbers run on,
        nobody has claimed it and it never went out, up to ``_TAIL_BYTES``:
        each extension rewrites the chunk, which must stay cheap. Called
        inside a transaction.
        """
        if self._tail is None:
            return False
        key, old_size = self._tail
        old_session, old_hid, old_first, old_count = _parse_chunk_key(key)
        cache = self._cache
        if not (
            (old_session, old_hid) == (session, hid)
            and old_first + old_count == first_nr
            and old_count + len(frames) <= self.chunk_events
            and old_size + size <= min(self.chunk_bytes, _TAIL_BYTES)
            and cache.get("l/" + key) is None
            and cache.get("m/" + key) is None
        ):
            return False
        try:
            old = cache.get(key)
        except QueueCorrupt:
            return False
        if not isinstance(old, bytes):  # sent and deleted meanwhile
            return False
        cache.delete(key)
        new_key = _chunk_key(session, hid, old_first, old_count + len(frames))
        cache.set(new_key, old + b"".join(frames))
        self._tail = (new_key, old_size + size)
        return True

    @_gated
    def append_journal(
        self,
        segment: str,
        read: Callable[[int], tuple[int, list[bytes]]],
        session: str,
        hid: str,
        schema: int,
        *,
        busy_timeout: float | None = None,
        known: tuple[int, int] | None = None,
    ) -> tuple[Appended, int, int]:
        """Move the next records of a journal segment in: number and store them, exactly once.

        ``read(offset)`` returns (the offset after the records read, their
        bodies) from ``offset`` on, the offset this store says the segment
        was moved to (``j/{segment}``). Reading, numbering, storing and
        recording the new offset happen in one transaction: whoever moves,
        and whenever a mover dies, every record is moved once. Events a full
        queue cannot take are refused (counted in ``Appended.dropped``) and
        passed over, as in :meth:`append`. Returns what was stored and the
        segment's new offset and how many of its events were moved in all
        (``j/{segment}`` holds both: ``offset << 32 | events``).
        """
        from .journal import START  # (journal imports nothing of the store)

        self._check_space()
        key = "j/" + segment
        with self._busy_timeout(busy_timeout), self._transaction():
            value = self._int(key, -1 << 62)  # (a sentinel for "no row")
            if value == -1 << 62:
                value = None
            if value is not None and value < 0:  # finished: moved to its end and removed
                return Appended(0, -1, 0, 0), 0, 0
            if value is None:
                # A row this store never had: the segment is new to it, or the
                # store is (a folder wiped under a running app): its writer's
                # own process knows how far it moved it.
                value = (known[0] << 32 | known[1]) if known is not None else 0
            start, moved = value >> 32, value & 0xFFFFFFFF
            if start < START:
                start, moved = START, 0
            end, bodies = read(start)
            first = self._last_nr(session) + 1
            room = max(0, self.max_events - self._counter(_PENDING))
            room_bytes = self.max_bytes - self._counter(_PENDING_BYTES)
            frames = number_bodies(bodies[:room], first, schema) if bodies else []
            size = 0
            for i, frame in enumerate(frames):
                if size + len(frame) > room_bytes:
                    del frames[i:]
                    break
                size += len(frame)
            if frames:
                last = first + len(frames) - 1
                if last > UINT32_MAX:
                    raise OverflowError(f"session {session} has used every nr up to {UINT32_MAX}")
                self._cache.set(f"n/{session}", last)
                self._known[session] = last
                if not self._extend_tail(session, hid, first, frames, size):
                    self._put_chunks(session, hid, first, frames)
                self._bump(pending=len(frames), size=size)
            self._book({"stored": len(frames), "dropped/queue_full": len(bodies) - len(frames)})
            moved += len(bodies)
            if end != start:
                self._cache.set(key, end << 32 | moved)
        done = Appended(first, first + len(frames) - 1, len(frames), len(bodies) - len(frames))
        return done, end, moved

    def last_known(self) -> dict[str, int]:
        """The last ``nr`` this object handed out or saw, per session (no I/O)."""
        return dict(self._known)

    @_gated
    def finish_journal(self, segment: str) -> None:
        """A segment moved to its end is removed: its row says so, for good.

        The row stays (as minus the time it finished, in ms) rather than
        going: a mover that opened the segment before it was removed must
        find it finished, not new. Rows finished over a day ago go.
        """
        now = _now_ms()
        with self._transaction():
            self._cache.set("j/" + segment, -now)
            for key in self._keys_with("j/"):
                value = self._int(key)
                if value is not None and value < 0 and now + value > _FINISHED_KEPT_MS:
                    self._cache.delete(key)

    @_gated
    def journal_offsets(self) -> dict[str, tuple[int, int]]:
        """How far each journal segment not finished was moved in: name -> (offset, events)."""
        out: dict[str, tuple[int, int]] = {}
        for key in self._keys_with("j/"):
            value = self._int(key)
            if value is not None and value >= 0:
                out[key[2:]] = (value >> 32, value & 0xFFFFFFFF)
        return out

    # -- rows that cannot be used --------------------------------------------------

    def _raw(self, key: str) -> bytes:
        """A row's stored bytes, whatever they are, without unpickling anything."""
        rows = self._sql("SELECT filename, value FROM Cache WHERE key = ? AND raw = 1", (key,))
        if not rows:
            return b""
        filename, value = rows[0]
        if filename:
            with (
                contextlib.suppress(OSError),
                open(os.path.join(self.directory, filename), "rb") as f,
            ):
                return f.read(1 << 24)
            return b""
        if isinstance(value, bytes):
            return value
        return str(value).encode("utf-8", "replace")

    def _is_raw_bytes(self, key: str) -> bool:
        """Whether the row is stored as plain bytes (not a pickle, a file or text)."""
        rows = self._sql("SELECT mode, typeof(value) FROM Cache WHERE key = ? AND raw = 1", (key,))
        return bool(rows) and tuple(rows[0]) == (diskcache.core.MODE_RAW, "blob")

    def _set_aside(self, key: str, why: str, say: bool = True) -> None:
        """Move one row to ``x/`` (inside a transaction), with its lease and attempts.

        A chunk's events count in the ledger's ``set_aside``: the payloads
        its bytes hold, or where they are not payloads, as many as its key
        says.
        """
        raw = self._raw(key)
        parsed = parse_chunk_key(key) if key.startswith("e/") else None
        if parsed is not None:
            framed = _frame_count(raw) if self._is_raw_bytes(key) else -1
            self._book({"set_aside": framed if framed > 0 else parsed[3]})
        self._cache.set("x/" + key, raw)
        for name in (key, "l/" + key, "m/" + key):
            self._cache.delete(name)
        self._damaged = True
        if say:
            self._notify(
                f"set aside an unusable row of the queue in {self.directory} ({key}: {why}); "
                "the rest is sent as usual (see `hamustro-logging status`)"
            )

    def _set_group_aside(self, session: str, hid: str, why: str) -> None:
        keys = list(self._keys_with(f"e/{session}/{hid}/"))
        for key in keys:
            self._set_aside(key, why, say=False)
        for key in (f"h/{session}/{hid}", f"d/{session}/{hid}"):
            if self._sql("SELECT 1 FROM Cache WHERE key = ? AND raw = 1", (key,)):
                self._cache.set("x/" + key, self._raw(key))
                self._cache.delete(key)
        self._notify(
            f"set aside {len(keys)} chunks of session {session} in the queue in "
            f"{self.directory}: {why}; the rest is sent as usual (see `hamustro-logging status`)"
        )

    def _group(self, session: str, hid: str) -> tuple[bytes, str | None] | None:
        """A group's header and destination, or None (and the group set aside) if unusable."""
        known = self._headers.get((session, hid))
        if known is not None:
            return known
        cache = self._cache
        try:
            header = cache.get(f"h/{session}/{hid}")
            destination = cache.get(f"d/{session}/{hid}")
        except QueueCorrupt:
            header = destination = None
        if isinstance(header, bytes) and (destination is None or isinstance(destination, str)):
            data = header if destination is None else destination.encode() + b"\0" + header
            if md5hex(data)[:8] == hid:
                self._headers[(session, hid)] = (header, destination)
                return header, destination
            why = "its header does not match its hash"
        elif self._has_live_writer(session, hid):
            return None  # not damage: its writer still holds the header and sends it
        else:
            why = "its header is missing or unreadable"
        self._set_group_aside(session, hid, why)
        return None

    def _chunk(self, key: str, n: int) -> bytes | None:
        """A chunk's bytes, or None (and the chunk set aside) if they are not ``n`` payloads."""
        try:
            value = self._cache.get(key)
        except QueueCorrupt:
            value = None
        if value is None and not self._sql("SELECT 1 FROM Cache WHERE key = ?", (key,)):
            return None  # deleted meanwhile
        if isinstance(value, bytes) and _frame_count(value) == n:
            return value
        self._set_aside(key, "not a run of payloads")
        return None

    # -- sending ---------------------------------------------------------------

    def _claimable(
        self, session: str, hid: str, destinations: Container[str] | None, skip: Container[str]
    ) -> bool:
        """Whether a group may be claimed now by a sender for one of ``destinations``."""
        if session in skip:
            return False
        info = self._group(session, hid)
        if info is None:
            return False
        if destinations is None or info[1] is None or info[1] in destinations:
            return True
        if (session, hid) not in self._foreign:
            self._foreign.add((session, hid))
            try:
                rebound = self._cache.get(f"d/rebound/{info[1]}") is not None
            except QueueCorrupt:
                rebound = False
            self._notify(
                f"the queue in {self.directory} also holds events of session {session} logged "
                + (
                    "for a collector or key it was rebound from (an app still running with the "
                    "old configuration?); they wait for a sender configured for it, or for "
                    "`hamustro-logging rebind` again"
                    if rebound
                    else "for another collector or key; they wait for a sender configured for it "
                    "(is queue_dir shared by two configurations?)"
                )
            )
        return False

    def _lease_free(self, key: str, now_ms: int, gone: dict[str, bool]) -> bool:
        try:
            value = self._cache.get("l/" + key)
        except QueueCorrupt:
            return True
        return not lease_held(value, now_ms, gone)

    @_gated
    def claim(
        self,
        owner: str,
        lease_seconds: float,
        max_events: int = 500,
        max_bytes: int = 64 * 1024,
        *,
        destination: str | Collection[str] | None = None,
        skip: Container[str] = (),
        exclude: Container[str] = (),
        lease: bool = True,
    ) -> Batch | None:
        """Lease unleased chunks of one group (session and header), up to the limits.

        Groups take turns: the search starts after the group this object
        claimed last and wraps around. Skipped: groups of a session in
        ``skip`` (the caller holds them back), groups logged for another
        ``destination`` (when given: one, or the several a sender accepts;
        groups written before destinations existed go to any sender),
        chunks leased by a live sender, chunk keys in ``exclude`` (sent,
        their delete owed). Returns ``None`` when nothing is left to claim,
        or while another process sends without leases. At least one chunk is
        claimed even if it alone exceeds a limit.

        ``lease=False`` (a full disk: no lease can be written) claims in
        memory, writing nothing (no attempt mark, no ``resent``: settling
        the batch counts them); only while this object holds the folder's
        send lock (:meth:`hold_sending`), so no other sender claims the same.
        """
        self._resume_salvage()
        if not lease and not self._send_lock.held:
            raise RuntimeError("claim(lease=False) without hold_sending()")
        with self._send_lock.shared() as others_lease:
            if not others_lease:
                return None
            return self._claim(
                owner, lease_seconds, max_events, max_bytes, destination, skip, exclude, lease
            )

    def hold_sending(self) -> bool:
        """Take the folder's send lock (to claim without leases); False if another holds it."""
        return self._send_lock.hold()

    def let_go_sending(self) -> None:
        """Drop the send lock taken by :meth:`hold_sending` (no unleased batch is left)."""
        self._send_lock.release()

    def _claim(
        self,
        owner: str,
        lease_seconds: float,
        max_events: int,
        max_bytes: int,
        destination: str | Collection[str] | None,
        skip: Container[str],
        exclude: Container[str],
        lease: bool,
    ) -> Batch | None:
        token = f"{owner}/{time.time_ns()}"
        now = _now_ms()
        gone: dict[str, bool] = {}
        keys: list[str] = []
        data: list[bytes] = []
        count = size = 0
        group: tuple[str, str] | None = None
        header = b""
        destinations = {destination} if isinstance(destination, str) else destination
        with self._transaction():
            cache = self._cache  # read under the gate: a salvage may have replaced it
            self._damaged = False
            for lo, hi in ((self._cursor, "e0"), ("e/", self._cursor)):
                done = False
                while not done:
                    page = self._range(lo, hi)
                    if not page:
                        break
                    lo = page[-1]
                    for key in page:
                        parsed = parse_chunk_key(key)
                        if parsed is None:
                            self._set_aside(key, "not a key this library writes")
                            continue
                        session, hid, _, n = parsed
                        if group is not None and (session, hid) != group:
                            done = True
                            break
                        if group is None and not self._claimable(session, hid, destinations, skip):
                            lo = f"e/{session}/{hid}0"  # on to the next group
                            break
                        if key in exclude or not self._lease_free(key, now, gone):
                            continue
                        value = self._chunk(key, n)
                        if value is None:
                            continue
                        if keys and (count + n > max_events or size + len(value) > max_bytes):
                            done = True
                            break
                        if group is None:
                            group, header = (session, hid), self._headers[(session, hid)][0]
                        keys.append(key)
                        data.append(value)
                        count += n
                        size += len(value)
                    else:
                        done = len(page) < _PAGE
                if group is not None:
                    break
            if self._damaged:  # rows were set aside: count what is left
                self._rebuild_counters()
            if group is None:
                return None
            expiry = now + int(lease_seconds * 1000)
            resent = 0
            for key in keys if lease else ():
                cache.set("l/" + key, f"{token}|{expiry}")
                # An attempt, counted before the request goes out; a chunk an
                # earlier request may have stored is a possible duplicate now.
                earlier = self._int("m/" + key) or 0
                cache.set("m/" + key, earlier + 1)
                if earlier:
                    resent += _parse_chunk_key(key)[3]
            self._book({"resent": resent})
            self._cursor = f"e/{group[0]}/{group[1]}0"
        return Batch(group[0], group[1], tuple(keys), header, b"".join(data), count, token, lease)

    def _mine(self, key: str, token: str, leased: bool = True) -> bool:
        """Whether the chunk is still ours: our lease; for an unleased batch, no lease at all."""
        try:
            value = self._cache.get("l/" + key)
        except QueueCorrupt:
            return False
        if not leased:
            return value is None
        return isinstance(value, str) and value.rpartition("|")[0] == token

    @_gated
    def ack(self, batch: Batch) -> Settled:
        """Delete a batch after the collector answered 200.

        Only chunks whose lease still carries ``batch.token`` are deleted: if
        another sender took a chunk over after our lease ran out, that sender
        owns it now (and its delivery will count as a resend).
        """
        return self.settle(batch, [True] * batch.count)

    @_gated
    def settle(
        self,
        batch: Batch,
        verdicts: Sequence[bool | str | None],
        kept_maybe_sent: bool | Sequence[bool] = False,
    ) -> Settled:
        """Apply a verdict per payload of ``batch`` (in order), in one transaction.

        True: delivered, deleted. A str (the reason: ``"400"``, ``"413"``;
        False means ``"400"``): refused by the collector, moved to the
        rejected area (kept on disk, see :meth:`retry_rejected`). None: not
        known, stored again as pending; ``kept_maybe_sent`` (for all, or per
        payload) says the last request that carried it may have been stored
        (``retry.possibly_stored``): its attempt stays, so its next send
        counts as a resend. Chunks whose lease is no longer ours are left
        alone. The ledger changes with the rows.
        """
        sent = resent = rejected = freed = 0
        maybe = (
            [kept_maybe_sent] * len(verdicts)
            if isinstance(kept_maybe_sent, bool)
            else list(kept_maybe_sent)
        )
        frames = iter(zip(batch.frames(), verdicts, maybe, strict=True))
        counts: collections.Counter[str] = collections.Counter()
        with self._transaction():
            cache = self._cache  # read under the gate: a salvage may have replaced it
            for key in batch.keys:
                session, hid, _, n = _parse_chunk_key(key)
                chunk = [next(frames) for _ in range(n)]
                if not self._mine(key, batch.token, batch.leased):
                    continue
                if batch.leased:
                    attempts = self._int("m/" + key) or 1
                else:  # claimed in memory: this send's attempt was not written
                    attempts = (self._int("m/" + key) or 0) + 1
                # A possible duplicate: a leased claim counted it in `resent`
                # (taken back if not stored), an unleased one counts it here.
                earlier = attempts > 1
                for key_ in (key, "l/" + key, "m/" + key):
                    cache.delete(key_)
                keep: list[tuple[int, bytes]] = []
                keep_maybe: list[tuple[int, bytes]] = []
                for (nr, frame), verdict, maybe_sent in chunk:
                    stored = verdict is True or (verdict is None and maybe_sent)
                    if earlier:
                        resent += stored
                        if batch.leased:
                            counts["resent"] -= not stored  # not stored: no duplicate after all
                        else:
                            counts["resent"] += stored
                    if verdict is None:
                        (keep_maybe if maybe_sent else keep).append((nr, frame))
                        continue
                    freed += len(frame)
                    if verdict is True:
                        sent += 1
                    else:
                        rejected += 1
                        counts["rejected/" + ("400" if verdict is False else verdict)] += 1
                        cache.set(f"r/{session}/{hid}/{nr:010d}/1", frame)
                for runs, kept_attempts in ((keep, attempts - 1), (keep_maybe, attempts)):
                    for run_first, run in _runs(runs):
                        self._put_chunks(session, hid, run_first, run, kept_attempts)
            if sent + rejected:
                self._bump(pending=-(sent + rejected), size=-freed, rejected=rejected)
            if sent:
                cache.set(_LAST_SYNC, _now_ms())
            counts["sent"] = sent
            booked = counts.pop("resent", 0)
            self._unbook_resent(-booked)
            counts["resent"] = max(booked, 0)
            self._book(counts)
        return Settled(sent, resent, rejected)

    def _unbook_resent(self, n: int) -> None:
        """Take back ``n`` of the ``resent`` a claim counted (the answer said: not stored)."""
        if n > 0:
            try:
                self._cache.incr(ledger_key("resent"), -n, default=n)
            except (QueueCorrupt, TypeError):
                self._cache.set(ledger_key("resent"), 0)

    @_gated
    def release(self, batch: Batch, maybe_sent: bool = False) -> Settled:
        """Give a batch back unsent (any answer but 200): drop our leases.

        ``maybe_sent``: the collector may have stored it (no answer after the
        whole body went out, or a gateway's 5xx: ``retry.possibly_stored``);
        the attempt the claim counted stays, and so does the ``resent`` it
        counted for a chunk sent before. Otherwise both are taken back.
        Returns the possible duplicates this send made (``Settled.resent``).
        A batch claimed without leases has nothing to give back (its claim
        wrote no lease, attempt or ``resent``).
        """
        if not batch.leased:
            return Settled()
        resent = 0
        with self._transaction():
            cache = self._cache  # read under the gate: a salvage may have replaced it
            for key in batch.keys:
                if not self._mine(key, batch.token):
                    continue
                cache.delete("l/" + key)
                attempts = self._int("m/" + key) or 1
                n = _parse_chunk_key(key)[3]
                if maybe_sent:
                    resent += n if attempts > 1 else 0
                    continue
                if attempts > 1:
                    cache.set("m/" + key, attempts - 1)
                    self._unbook_resent(n)
                else:
                    cache.delete("m/" + key)
        return Settled(resent=resent)

    @_gated
    def renew(self, batch: Batch, lease_seconds: float) -> None:
        """Extend our leases on ``batch`` (a long bisection needs more time)."""
        if not batch.leased:
            return
        expiry = _now_ms() + int(lease_seconds * 1000)
        with self._transaction():
            cache = self._cache  # read under the gate: a salvage may have replaced it
            for key in batch.keys:
                if self._mine(key, batch.token):
                    cache.set("l/" + key, f"{batch.token}|{expiry}")

    @_gated
    def give_back(self, owner: str) -> int:
        """Drop every lease ``owner`` holds (it stops with a request in flight); return how many.

        The attempts stay counted: those requests may still reach the collector.
        """
        freed = 0
        with self._transaction():
            cache = self._cache  # read under the gate: a salvage may have replaced it
            for key in list(self._keys_with("l/")):
                try:
                    value = cache.get(key)
                except QueueCorrupt:
                    value = None
                if isinstance(value, str) and token_owner(value.rpartition("|")[0]) == owner:
                    cache.delete(key)
                    freed += 1
        return freed

    # -- moving events to another collector or key -----------------------------

    @_gated
    def rebind(self, destination: str) -> int:
        """Bind every group of events to ``destination``; return how many events moved.

        For a rotated key or a collector that moved: events logged for the
        old one are otherwise left for a sender configured for it. Leases
        are dropped (a sender of the old destination still in a request
        then does not delete what it sent; the attempt stays counted, so the
        next delivery counts as a resend).

        The old group's header and destination rows stay: an app still
        running with the old configuration (a rolling rotation) goes on
        logging into it, and those events stay pending for the old
        destination, never set aside. ``d/rebound/{old}`` remembers where
        the old destination's events went, so ``status`` can say that a
        later ``rebind`` moves them too.
        """
        moved = 0
        with self._transaction():
            cache = self._cache
            groups = {
                parsed[:2]
                for prefix in ("e/", "r/")
                for key in self._keys_with(prefix)
                if (parsed := parse_chunk_key(key)) is not None
            }
            for session, hid in sorted(groups):
                info = self._group(session, hid)
                if info is None or info[1] == destination:
                    continue
                header = info[0]
                new = md5hex(destination.encode() + b"\0" + header)[:8]
                cache.set(f"h/{session}/{new}", header)
                cache.set(f"d/{session}/{new}", destination)
                for prefix in ("e/", "r/"):
                    for key in list(self._keys_with(f"{prefix}{session}/{hid}/")):
                        _, _, first, n = _parse_chunk_key(key)
                        target = f"{prefix}{session}/{new}/{first:010d}/{n}"
                        cache.set(target, cache.get(key))
                        attempts = self._int("m/" + key)
                        if attempts:
                            cache.set("m/" + target, attempts)
                        for old in (key, "l/" + key, "m/" + key):
                            cache.delete(old)
                        moved += n if prefix == "e/" else 1
                if info[1] is not None:
                    cache.set(f"d/rebound/{info[1]}", destination)
            self._tail = None
        return moved

    # -- the user (schema 2's SetUser / LoadUser) ----------------------------------

    @_gated
    def set_user(self, client_id: str, tenant_id: str | None, user_id: str | None) -> None:
        """Remember the signed-in user of ``client_id`` (None: signed out), for later runs too."""
        with self._transaction():
            if tenant_id is None and user_id is None:
                self._cache.delete(f"u/{client_id}")
            else:
                value = json.dumps({"tenant_id": tenant_id, "user_id": user_id})
                self._cache.set(f"u/{client_id}", value)

    @_gated
    def load_user(self, client_id: str) -> tuple[str | None, str | None]:
        """(tenant_id, user_id) stored by :meth:`set_user`; (None, None) if none (or unreadable)."""
        try:
            doc = json.loads(self._cache.get(f"u/{client_id}") or "{}")
        except (QueueCorrupt, TypeError, ValueError):
            return None, None
        if not isinstance(doc, dict):
            return None, None
        tenant, user = doc.get("tenant_id"), doc.get("user_id")
        return (
            tenant if isinstance(tenant, str) else None,
            user if isinstance(user, str) else None,
        )

    # -- the rejected area and rows set aside ----------------------------------

    @_gated
    def rejected_count(self) -> int:
        """Events set aside after the collector refused them (400, 413)."""
        return self._counter(_REJECTED)

    @_gated
    def aside_count(self) -> int:
        """Rows moved to ``x/`` because they could not be used."""
        return self._counter(_ASIDE)

    @_gated
    def retry_rejected(self) -> int:
        """Move every rejected event back to pending; return how many moved."""
        moved = freed = 0
        with self._transaction():
            cache = self._cache  # read under the gate: a salvage may have replaced it
            for key in list(self._keys_with("r/")):
                value = cache.get(key)
                cache.delete(key)
                if isinstance(value, bytes):
                    cache.set("e/" + key[2:], value)
                    moved += 1
                    freed += len(value)
            if moved:
                self._bump(pending=moved, size=freed, rejected=-moved)
                self._book({"retried": moved})
        return moved

    @_gated
    def iter_events(self, rejected: bool = False) -> Iterator[tuple[str, bytes, int, bytes]]:
        """(session, header, nr, framed payload) of every pending (or rejected) event."""
        prefix = "r/" if rejected else "e/"
        out: list[tuple[str, bytes, int, bytes]] = []
        for key in list(self._keys_with(prefix)):
            parsed = parse_chunk_key(key)
            if parsed is None:
                continue
            session, hid, first, _ = parsed
            try:
                value, header = self._cache.get(key), self._cache.get(f"h/{session}/{hid}")
                frames = list(iter_frames(value)) if isinstance(value, bytes) else []
            except (QueueCorrupt, ValueError, IndexError):
                continue
            if isinstance(header, bytes):
                out.extend((session, header, first + i, f) for i, f in enumerate(frames))
        return iter(out)

    @_gated
    def iter_aside(self) -> Iterator[tuple[str, bytes]]:
        """(original key, raw bytes) of every row set aside."""
        return iter([(key[2:], self._raw(key)) for key in list(self._keys_with("x/"))])

    # -- reading ---------------------------------------------------------------

    @_gated
    def pending_count(self) -> int:
        """Unsent events (leased ones included)."""
        return self._counter(_PENDING)

    @_gated
    def pending_bytes(self) -> int:
        """Bytes of the unsent payloads."""
        return self._counter(_PENDING_BYTES)

    @_gated
    def last_sync(self) -> float:
        """Epoch seconds of the last 200 (or of the queue's creation)."""
        value = self._int(_LAST_SYNC)
        if value is None:
            with self._transaction():
                self._rebuild_counters()
            value = self._int(_LAST_SYNC)
        return (value or 0) / 1000

    @_gated
    def last_numbers(self) -> dict[str, int]:
        """The last ``nr`` given in every session this folder has seen."""
        return {key[2:]: self._last_nr(key[2:]) for key in list(self._keys_with("n/"))}

    @_gated
    def unsent_ranges(self, session: str) -> list[tuple[int, int]]:
        """(first nr, last nr) of every unsent chunk of ``session`` (leased ones included)."""
        out = []
        for key in list(self._keys_with(f"e/{session}/")):
            parsed = parse_chunk_key(key)
            if parsed is not None:
                out.append((parsed[2], parsed[2] + parsed[3] - 1))
        return out

    @_gated
    def fates(self, session: str, ranges: Sequence[tuple[int, int]]) -> list[Fate]:
        """Where the events of each ``(first, last)`` range of ``session`` are now.

        For a handler's ``flush()``: the numbers it stored (``Appended``) are
        delivered once none of them is pending, rejected or set aside (see
        :class:`Fate`). Events the store dropped never got a stored number:
        ``Appended.dropped`` counts them when they are appended. Reads only.

        >>> import tempfile
        >>> from hamustro_logging.wire import Event
        >>> q = Queue(tempfile.mkdtemp())
        >>> hid = q.register_header("s", b"\\x0a\\x01d")
        >>> q.append("s", hid, [Event(1, b"a"), Event(2, b"b"), Event(3, b"c")]).last_nr
        3
        >>> batch = q.claim("me", lease_seconds=60)
        >>> q.settle(batch, [True, "400", None]).rejected
        1
        >>> q.fates("s", [(1, 3)])
        [Fate(first=1, last=3, pending=1, rejected=1, set_aside=0)]
        >>> q.close()
        """
        held: dict[str, list[tuple[int, int]]] = {"pending": [], "rejected": [], "set_aside": []}
        for state, prefix in (("pending", "e/"), ("rejected", "r/"), ("set_aside", "x/e/")):
            for key in list(self._keys_with(f"{prefix}{session}/")):
                parsed = parse_chunk_key(key.removeprefix("x/"))
                if parsed is not None:
                    held[state].append((parsed[2], parsed[2] + parsed[3] - 1))
        out = []
        for first, last in ranges:
            counts = {
                state: sum(max(0, min(last, hi) - max(first, lo) + 1) for lo, hi in spans)
                for state, spans in held.items()
            }
            out.append(Fate(first, last, **counts))
        return out

    @_gated
    def sessions(self) -> list[SessionInfo]:
        """Per session: unsent and leased events, bytes and the oldest ``nr``."""
        rows = self._sql(
            "SELECT key, length(value) FROM Cache WHERE key > 'e/' AND key < 'e0' AND raw = 1"
        )
        return summarize_sessions(rows, self._cache.get)

    @_gated
    def close(self) -> None:
        """Close this thread's SQLite connection (others close with their threads).

        From here on this object is no longer a live writer of its groups
        (until it writes again).
        """
        self._send_lock.release()
        _OPEN_WRITERS.pop(self.writer, None)
        self._cache.close()

    # -- a database SQLite reports as corrupt ------------------------------------

    def _salvage(self, error: str) -> None:
        """Set a corrupt database aside, and carry a first slice of what can be read of it.

        Under a lock on the folder, so two processes that notice together do
        not each set aside the other's fresh database: the one that comes
        second finds the file replaced and only reopens. Before any row is
        carried, numbering jumps past every number the file shows (its
        counters and chunk keys, read through its key index), so a row
        carried by a later slice never meets a number given meanwhile, and
        the journal offsets (``j/``) are carried first. The ledger's rows
        (``s/ledger/``) are added to the new database's as the slices meet
        them (:meth:`_carry_ledger_row`), and the events that could not be
        read are counted as ``set_aside`` once the last slice is carried. One
        slice reads for at most about ``salvage_seconds``: a large or badly
        damaged file is carried over later opens and claims
        (:meth:`_resume_salvage`); it stays as ``cache.db.corrupt-<time>``.
        """
        with self._gate(), _folder_lock(self.directory):
            with contextlib.suppress(Exception):
                self._cache.close()
            if _file_id(self._path) != self._db_id:
                self._cache = self._open_cache()  # another process did it already
                return
            aside = f"{self._path}.corrupt-{time.time_ns()}"
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(self._path + suffix, aside + suffix)
            self._cache = self._open_cache()
            self._headers.clear()
            self._tail = None
            name = os.path.basename(aside)
            for session, nr in known_numbers(aside, self.timeout).items():
                self._known[session] = max(self._known.get(session, 0), nr)
            self._carry_numbers()
            with self._transaction():
                self._cache.set(_SALVAGE + name, 0)
                # How far each journal segment was moved in, before a spool
                # can move one in again from its start.
                for key, value in rows_with(aside, "j/", KEY_PREFIXES, self.timeout):
                    self._cache.add(key, value)
            carried, done = self._carry_slice(name) or (0, True)
            self._salvage_at = time.monotonic() + _SALVAGE_PAUSE * self.salvage_seconds
            self._carry_numbers()
            for (session, _), (header, destination) in list(self._registered.items()):
                self.register_header(session, header, destination)
        later = "" if done else "; the rest is carried over at the next opens and sends"
        self._notify(
            f"the queue database in {self.directory} is corrupt ({error}); set it aside as "
            f"{name} and carried {carried} readable rows into a new one{later}"
            + (self._ledger_lost(name) if done else "")
        )

    def _carry_ledger_row(self, key: str, value: object) -> None:
        """Add a ledger row of a set-aside database to this one's (in a transaction).

        Its counts are added to what the new database counted meanwhile (a
        slice reads each row once); ``since`` becomes the older of the two.
        """
        if type(value) is not int:
            return
        if key == SINCE:
            now = self._int(SINCE)
            self._cache.set(SINCE, value if now is None else min(now, value))
            return
        try:
            self._cache.incr(key, value, default=0)
        except (QueueCorrupt, TypeError):
            self._cache.set(key, value)

    def _ledger_lost(self, name: str) -> str:
        """What to add to the line of a finished salvage if its ``since`` was not carried.

        The new database's ``since`` is later than the file was set aside
        (``cache.db.corrupt-<ns>``); a carried one is earlier.
        """
        try:
            aside_ms = int(name.rpartition("-")[2]) // 1_000_000
        except ValueError:
            return ""
        since = self._int(SINCE)
        if since is not None and since < aside_ms:
            return ""
        return "; the ledger's counts could not be read: counting starts again from here"

    def _resume_salvage(self) -> None:
        """Carry one more slice of a set-aside database not finished yet, if it is time.

        At every open, then at claims no more often than every
        ``_SALVAGE_PAUSE`` slices' time. Skipped while another process (or
        thread) carries one. A failure to write (a full disk, a lock held
        too long) leaves the rest for a later try.
        """
        now = time.monotonic()
        if not self._salvaging or now < self._salvage_at:
            return
        self._salvage_at = now + _SALVAGE_PAUSE * self.salvage_seconds
        names = [key[len(_SALVAGE) :] for key in self._keys_with(_SALVAGE)]
        self._salvaging = bool(names)
        if not names:
            return
        try:
            with _folder_lock(self.directory, wait=False) as held:
                if not held:
                    return
                carried = self._carry_slice(names[0])
                self._carry_numbers()
        except (OSError, sqlite3.OperationalError, diskcache.Timeout):
            return
        if carried is not None and carried[1]:
            self._notify(
                f"carried what could be read of {names[0]} (a corrupt database set aside) "
                f"into the queue in {self.directory}" + self._ledger_lost(names[0])
            )

    def _carry_slice(self, name: str) -> tuple[int, bool] | None:
        """Carry the next slice of the set-aside database ``name``: (rows carried, finished).

        None if there is nothing to carry (finished by another process, the
        file removed). Under the folder lock. The rows and the new position
        are written in one transaction, so a row is never carried twice (it
        could have been sent and deleted since); a row the new database has
        already is left as it is there.
        """
        key = _SALVAGE + name
        position = self._int(key, -1)
        path = os.path.join(self.directory, name)
        if position == -1:
            return None
        if position is None or not os.path.isfile(path):  # unreadable marker, or file removed
            with self._transaction():
                self._cache.delete(key)
            return None
        got = read_slice(path, KEY_PREFIXES, position, self.salvage_seconds, self.timeout)
        carried = pending = size = rejected = aside = 0
        with self._transaction():
            cache = self._cache
            if self._int(key, -1) != position:
                return 0, False  # carried meanwhile by someone that did not take the lock
            for row, value in got.rows:
                if row.startswith(LEDGER_PREFIX):
                    self._carry_ledger_row(row, value)
                    continue
                if row.startswith("n/"):
                    if type(value) is int:
                        self._known[row[2:]] = max(self._known.get(row[2:], 0), value)
                    continue
                if not cache.add(row, value):
                    continue
                carried += 1
                parsed = parse_chunk_key(row) if row[:2] in ("e/", "r/") else None
                if parsed is not None:
                    last_nr = parsed[2] + parsed[3] - 1
                    self._known[parsed[0]] = max(self._known.get(parsed[0], 0), last_nr)
                if parsed is not None and row.startswith("e/"):
                    pending += parsed[3]
                    size += len(value) if isinstance(value, bytes) else 0
                rejected += parsed is not None and row.startswith("r/")
                aside += row.startswith("x/")
            self._bump(pending=pending, size=size, rejected=rejected, aside=aside)
            if got.done:
                cache.delete(key)
                # Events that could not be read stay in the file set aside:
                # counted now that no later slice can still carry them.
                self._reconcile_ledger()
            else:
                cache.set(key, got.position)
        return carried, got.done
