"""The store's SQLite connection and its locks: the one place the lock discipline lives.

Every part of the store (:mod:`hamustro_logging.store`) reaches the folder's
database through one :class:`Db`: a diskcache ``Cache`` (SQLite in WAL mode)
that several processes may open at once (gunicorn workers do). Every change
happens inside one diskcache transaction (``BEGIN IMMEDIATE``), so
numbering, claiming and deleting are atomic across processes.

Who calls what: :class:`~hamustro_logging.queue.Queue` makes the ``Db`` and
runs each of its public methods under :func:`gated`, on whichever thread
calls it (the application's, the spool thread, the send thread, the CLI);
the parts then use :meth:`Db.transaction`, :meth:`Db.keys_with` and the
other row reads under the gate that call holds. diskcache keeps one SQLite
connection per thread, so a ``Queue`` may be shared between threads; it
must not be used across ``os.fork()``: the child opens one of its own.

**The locks, in the order a thread takes them** (it may hold several):

1. **The fork gate** (``_fork_gate``, a reentrant lock of the process).
   Every use of SQLite by any ``Queue`` of this process happens under it:
   :func:`gated` takes it around each public method, :meth:`Db.transaction`
   and :meth:`Db.gate` around their work. The threads take turns at the
   database instead of busy-waiting inside SQLite. It is never taken around
   ``os.fork()`` (a lock there is one more thing a thread can break);
   instead a forked child looks at it: held by a parent thread at the fork,
   it means that thread was inside SQLite, whose process-wide mutexes the
   child then inherited held, so the child must never call SQLite
   (:func:`sqlite_usable_after_fork`; the tracker raises
   :class:`~hamustro_logging.store.errors.QueueUnusableHere` there, and
   opens one queue at a time under its own ``_open_lock``). Such a child's
   events reach the store through its journal, moved by the parent or an
   agent.
2. **A folder lock** (a ``flock`` the kernel drops when its process dies):
   ``salvage.lock``, taken under the gate while a corrupt database is set
   aside or a slice of it carried (:mod:`~hamustro_logging.store.corrupt`;
   at claims and opens only if free); or ``send.lock``
   (:mod:`hamustro_logging.sendlock`), taken shared under the gate around
   a claim that writes leases, and held alone, from ``Queue.hold_sending``
   (outside the gate) until ``let_go_sending``, by a sender that claims in
   memory.
3. **SQLite's write lock** (``BEGIN IMMEDIATE``, :meth:`Db.transaction`).
   While another process holds it, SQLite is asked again for ``_SLICE``
   seconds at a time, and between the attempts the thread waits *outside*
   the fork gate (:func:`_outside_gate` lets go of all its holds; a folder
   lock it holds stays held): a fork, and this process's other threads,
   never wait for another process's lock.
   It gives up after the caller's ``busy_timeout`` or the queue's
   ``timeout`` (:class:`~hamustro_logging.store.errors.QueueBusy`); opening
   the database (diskcache writes its settings then) is bounded the same way
   (:class:`_Cache`).

Two rules keep the gate from being held where it could deadlock:
**notices** (the lines a repair says, which an app may route into
``logging``, whose handlers take locks of their own) are said only once the
thread has released the gate (:meth:`Db.notify`); and a **corrupt
database** is salvaged only by a thread's outermost gated call, never by
one nested in another method's transaction (:func:`gated`).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar, cast

import diskcache
import diskcache.core

from .. import folder
from .errors import QueueBusy, QueueCorrupt, is_corruption
from .keys import after

__all__ = ["Db", "SafeDisk", "gated", "now_ms", "sqlite_usable_after_fork"]

_DB = folder.DB_FILES[0]
#: How long one attempt at the write lock may wait inside SQLite, holding the
#: fork gate; between attempts the thread waits outside it.
_SLICE = 0.002
#: Keys read per query while walking the chunks.
PAGE = 64

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


# -- the fork gate (lock 1) -------------------------------------------------------

_fork_gate = threading.RLock()
_sqlite_usable = True
#: Whether the garbage collector ran automatically before the fork in progress.
_gc_was_enabled = False


def _before_fork() -> None:
    global _gc_was_enabled
    # No collection in the child before it knows whether SQLite may be used
    # there (the other libraries' after-fork hooks run before ours).
    _gc_was_enabled = gc.isenabled()
    gc.disable()


def _after_fork_in_parent() -> None:
    if _gc_was_enabled:
        gc.enable()


def _after_fork_in_child() -> None:
    global _fork_gate, _sqlite_usable
    # The forking thread is the only one left; it was not inside SQLite (it
    # was forking), so the gate is free unless another thread held it.
    if _fork_gate.acquire(blocking=False):
        _fork_gate.release()
    else:
        _sqlite_usable = False
    _fork_gate = threading.RLock()
    if not _sqlite_usable:
        # Never collect what the parent left: a SQLite connection among its
        # garbage (every connection sits in a reference cycle, and the parent's
        # threads' ones become garbage here) would be finalized by the collector,
        # a call into SQLite, whose mutexes the parent's thread may hold forever
        # here. What the child makes is collected as usual.
        gc.freeze()
    if _gc_was_enabled:
        gc.enable()


def sqlite_usable_after_fork() -> bool:
    """False in a process forked while one of the parent's threads was inside SQLite.

    (Or a descendant of one.) Such a child never opens the queue's
    database: SQLite's process-wide mutexes may be held forever there.
    """
    return _sqlite_usable


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


def _outside_gate(seconds: float) -> None:
    """Sleep with the fork gate released (all of this thread's holds), then take it back."""
    state = _fork_gate._release_save()  # type: ignore[attr-defined]  # as Condition.wait does
    try:
        time.sleep(seconds)
    finally:
        _fork_gate._acquire_restore(state)  # type: ignore[attr-defined]


class _Gated(Protocol):
    """What :func:`gated` needs of the object whose methods it wraps (the ``Queue``)."""

    _db: Db

    def _salvage(self, error: str) -> None: ...


_F = TypeVar("_F", bound=Callable[..., Any])


def gated(method: _F) -> _F:
    """Run ``method`` under the fork gate; a corrupt database is salvaged and the call retried.

    Only the outermost call of a thread does the salvage, never one nested in
    another method's transaction.
    """

    @functools.wraps(method)
    def run(self: _Gated, *args: Any, **kwargs: Any) -> Any:
        local = self._db.local
        with self._db.gate():
            outer = not getattr(local, "depth", 0)
            local.depth = getattr(local, "depth", 0) + 1
            try:
                return method(self, *args, **kwargs)
            except sqlite3.DatabaseError as exc:
                if not (outer and is_corruption(exc)):
                    raise
                error = str(exc)
            finally:
                local.depth -= 1
        self._salvage(error)
        return method(self, *args, **kwargs)

    return cast(_F, run)


# -- opening (bounded like lock 3) -------------------------------------------------


class _Cache(diskcache.Cache):
    """diskcache's ``Cache``, whose writes outside a transaction wait a bounded time.

    diskcache writes its settings at every open, retrying "database is
    locked" for up to 60 s; here the retries stop at ``open_until`` (a
    ``time.monotonic()`` value, with ``QueueBusy``) and wait outside the fork
    gate, like :meth:`Db.transaction`.
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


def now_ms() -> int:
    """Epoch milliseconds, as the rows hold times."""
    return time.time_ns() // 1_000_000


def file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Db:
    """One folder's database as the parts of one ``Queue`` share it.

    ``cache`` is the diskcache ``Cache``; a salvage replaces it, so a part
    reads ``db.cache`` anew under the gate rather than keeping it. ``local``
    is per thread: the nesting of gated calls and of gate holds, the
    caller's ``busy_timeout``, and the notices to say once the gate is
    released.
    """

    #: Set by :meth:`open` (absent until the first open succeeds).
    cache: diskcache.Cache

    def __init__(
        self,
        directory: str,
        *,
        timeout: float,
        open_timeout: float | None,
        notify: Callable[[str], None] | None,
    ) -> None:
        self.directory = directory
        self.timeout = timeout
        self._tell = notify or (lambda line: None)
        self.local = threading.local()
        self.db_id: tuple[int, int] | None = None
        self.folder_id = folder.open_private(directory)  # refuses a folder others can write
        self.open_deadline = time.monotonic() + (timeout if open_timeout is None else open_timeout)

    @property
    def path(self) -> str:
        return os.path.join(self.directory, _DB)

    def open(self, begin: Callable[[], None]) -> None:
        """Open (or create) the database; ``begin`` writes its first rows, in a transaction."""
        cache = _Cache(
            self.directory,
            timeout=_SLICE,
            disk=SafeDisk,
            open_until=self.open_deadline,
            folder=self.directory,
            **_SETTINGS,
        )
        self.cache = cache
        with self.transaction():
            begin()
        self.db_id = file_id(self.path)
        # The database and its WAL files exist now: 0600, and still in the same folder.
        try:
            folder.seal(self.directory, self.folder_id)
        except Exception:
            cache.close()
            raise

    def replaced(self) -> bool:
        """True if the folder's database is no longer the file this object opened."""
        return file_id(self.path) != self.db_id

    def notify(self, line: str) -> None:
        """Say ``line`` once this thread has released the fork gate.

        Never while holding it: the notice goes to stderr, which an app may
        route into ``logging``, whose handlers (ours included) take locks of
        their own; a thread waiting for one of them must not hold the gate
        that another thread, holding it, waits for.
        """
        notices = getattr(self.local, "notices", None)
        if notices is None:
            notices = self.local.notices = []
        notices.append(line)

    @contextlib.contextmanager
    def gate(self) -> Iterator[None]:
        """Hold the fork gate; notices gathered meanwhile are said after the last release."""
        local = self.local
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

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """A diskcache transaction (``BEGIN IMMEDIATE``), under the fork gate.

        While another process holds the write lock, SQLite is asked again and
        again for ``_SLICE`` seconds at a time, and between the attempts this
        thread waits *outside* the fork gate: a fork, and this process's other
        threads, never wait for another process's lock. It gives up after the
        caller's ``busy_timeout`` (``QueueBusy``), or the queue's ``timeout``.
        """
        wait = getattr(self.local, "busy_timeout", None)
        limit = self.timeout if wait is None else wait
        deadline = time.monotonic() + limit
        pause = 0.0002
        with self.gate():
            while True:
                transaction = self.cache.transact()
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
                # Short pauses (and a short _SLICE: SQLite's own waits grow to
                # 10 ms and more): a lock another process holds for a moment (a
                # sibling worker's transaction, about a millisecond) is picked
                # up soon after, not a few milliseconds later with both cores idle.
                pause = min(pause * 2, 0.002)
            try:
                yield
            except BaseException:
                if not transaction.__exit__(*sys.exc_info()):
                    raise
            else:
                transaction.__exit__(None, None, None)

    @contextlib.contextmanager
    def busy_timeout(self, seconds: float | None) -> Iterator[None]:
        """This thread's transactions give up after ``seconds`` of another process's lock."""
        if seconds is None:
            yield
            return
        self.local.busy_timeout = seconds
        try:
            yield
        finally:
            self.local.busy_timeout = None

    # -- reading rows ------------------------------------------------------------

    def sql(self, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        # diskcache has no range query; its own table and index serve one
        # (the unique index on (key, raw) orders str keys).
        rows: list[Any] = self.cache._sql(statement, params).fetchall()
        return rows

    def keys_between(self, lo: str, hi: str, limit: int = PAGE) -> list[str]:
        """Up to ``limit`` str keys ``k`` with ``lo < k < hi``, in order."""
        rows = self.sql(
            "SELECT key FROM Cache WHERE key > ? AND key < ? AND raw = 1 ORDER BY key LIMIT ?",
            (lo, hi, limit),
        )
        return [key for (key,) in rows]

    def keys_with(self, prefix: str) -> Iterator[str]:
        lo, hi = prefix, after(prefix)
        while True:
            keys = self.keys_between(lo, hi, 256)
            yield from keys
            if len(keys) < 256:
                return
            lo = keys[-1]

    def int_row(self, key: str, default: int = 0) -> int | None:
        """An int row, or None if the row holds something else (tampering)."""
        try:
            value = self.cache.get(key, default)
        except QueueCorrupt:
            return None
        return value if type(value) is int else None

    def raw(self, key: str) -> bytes:
        """A row's stored bytes, whatever they are, without unpickling anything."""
        rows = self.sql("SELECT filename, value FROM Cache WHERE key = ? AND raw = 1", (key,))
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

    def close(self) -> None:
        """Close this thread's SQLite connection (others close with their threads)."""
        self.cache.close()
