"""The on-disk event queue, kept in a diskcache ``Cache`` (SQLite in WAL mode).

Several processes may open the same folder (gunicorn workers do): every
change happens inside one diskcache transaction (``BEGIN IMMEDIATE``), so
numbering, claiming and deleting are atomic across processes.

Who calls what:

* ``append`` is called by the handler's spool thread (or, in durable mode and
  from ``ClientTracker.track_event``, by the application's thread);
* ``claim``, ``ack`` and ``release`` by whoever sends: the handler's flusher
  thread, or ``ClientTracker.flush``;
* the read-only counters by anyone.

A ``Queue`` object is safe to share between threads: diskcache keeps one
SQLite connection per thread. It must not be used across ``os.fork()``: the
child opens a new one (see ``HamustroHandler``).

Keys (all ``str``; values only ``bytes``, ``str`` and ``int``, nothing is
pickled, and :class:`SafeDisk` refuses to unpickle what a tampered file holds):

=========================================  =======================================
``e/{session}/{hid}/{first_nr:010d}/{n}``  a chunk: ``n`` framed payloads (bytes)
``l/{chunk key}``                           lease on a chunk being sent (str, expires)
``m/{chunk key}``                           the chunk went out once without an answer (int)
``r/{session}/{hid}/{nr:010d}/1``           an event the collector refused with 400 (bytes)
``h/{session}/{hid}``                       the collection header, fields 1-7 (bytes)
``n/{session}``                             last ``nr`` given in the session (int)
``s/pending``, ``s/pending_bytes``          unsent events and their bytes (int)
``s/last_sync``                             epoch milliseconds of the last 200 (int)
``s/rejected``                              events set aside in ``r/`` (int)
=========================================  =======================================

``hid`` is a short hash of the header, so events keep the ``system`` and
``product_git_hash`` they were logged with even when those change between
runs without a version bump. Chunk keys sort by session, header and ``nr``,
so one scan from the front finds the oldest unsent events of a session.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import diskcache
import diskcache.core

from . import folder
from .wire import UINT32_MAX, Event, encode_payloads, iter_frames, md5hex

__all__ = [
    "Appended",
    "Batch",
    "Queue",
    "QueueCorrupt",
    "QueueFull",
    "SafeDisk",
    "SessionInfo",
    "Settled",
]

_PENDING = "s/pending"
_PENDING_BYTES = "s/pending_bytes"
_LAST_SYNC = "s/last_sync"
_REJECTED = "s/rejected"

#: SQLite settings. ``eviction_policy='none'``: diskcache is a cache and by
#: default evicts old items past 1 GB; a queue must never do that. Small page
#: cache and no mmap keep resident memory flat with a large backlog.
_SETTINGS: dict[str, Any] = {
    "eviction_policy": "none",
    "statistics": 0,
    "tag_index": 0,
    # No culling on every write: expired leases are overwritten by the next
    # claim or deleted with their chunk, so nothing accumulates.
    "cull_limit": 0,
    "sqlite_mmap_size": 0,
    "sqlite_cache_size": 2048,
    # Every value stays inside cache.db (0600): diskcache would write a value
    # of this size or more to a file of its own, with the umask's modes.
    "disk_min_file_size": 1 << 62,
}


class QueueCorrupt(ValueError):
    """The queue folder holds something this library never writes."""


class QueueFull(RuntimeError):
    """The queue holds ``max_queue_events`` / ``max_queue_bytes`` unsent; the event was refused."""


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
    keys: tuple[str, ...]
    header: bytes
    data: bytes
    count: int
    token: str

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
class SessionInfo:
    """What ``Queue.sessions`` reports of one session's unsent events."""

    session: str
    pending: int
    leased: int
    bytes: int
    oldest_nr: int


#: Every use of SQLite by a Queue in this process happens under this lock, and
#: os.fork() takes it too (register_at_fork below), so no thread of ours is
#: inside SQLite when the process forks. A child inherits a copy of SQLite's
#: state: forked while a thread held the write lock, or one of SQLite's
#: internal mutexes, the child could never write to the folder, or would hang
#: on its first call. The calls it guards are short; a fork waits for the one
#: in progress. It also makes this process's threads take turns at the
#: database instead of busy-waiting inside SQLite. Reentrant: a method may
#: call another.
_fork_gate = threading.RLock()


def _reset_gate_in_child() -> None:
    global _fork_gate
    _fork_gate = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=lambda: _fork_gate.acquire(),
        after_in_parent=lambda: _fork_gate.release(),
        after_in_child=_reset_gate_in_child,
    )

_F = TypeVar("_F", bound=Callable[..., Any])

#: A chunk written one event at a time grows by rewriting it: only up to this
#: size (about 60 typical events), so an append stays a small write.
_TAIL_BYTES = 4096


def _gated(method: _F) -> _F:
    """Run ``method`` under the fork gate."""

    @functools.wraps(method)
    def gated(*args: Any, **kwargs: Any) -> Any:
        with _fork_gate:
            return method(*args, **kwargs)

    return cast(_F, gated)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _chunk_key(session: str, hid: str, first_nr: int, count: int) -> str:
    return f"e/{session}/{hid}/{first_nr:010d}/{count}"


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
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        chunk_events: int = 500,
        chunk_bytes: int = 256 * 1024,
        max_events: int = 10_000_000,
        max_bytes: int = 1 << 30,
        timeout: float = 10.0,
    ) -> None:
        self.directory = os.fspath(directory)
        self.chunk_events = chunk_events
        self.chunk_bytes = chunk_bytes
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._tail: tuple[str, int] | None = None  # the last chunk written: key, bytes
        folder_id = folder.open_private(self.directory)  # refuses a folder others can write
        with _fork_gate:
            self._cache = diskcache.Cache(
                self.directory, timeout=timeout, disk=SafeDisk, **_SETTINGS
            )
            # A brand-new queue counts retention from its creation, so it does
            # not send on every event before its first sync.
            self._cache.add(_LAST_SYNC, _now_ms())
        # The database and its WAL files exist now: 0600, and still in the same folder.
        folder.seal(self.directory, folder_id)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """A diskcache transaction (``BEGIN IMMEDIATE``), under the fork gate."""
        with _fork_gate, self._cache.transact():
            yield

    # -- writing ---------------------------------------------------------------

    @_gated
    def register_header(self, session: str, header: bytes) -> str:
        """Store a session's collection header; return its id for :meth:`append`."""
        hid = md5hex(header)[:8]
        self._cache.add(f"h/{session}/{hid}", header)
        return hid

    @_gated
    def append(
        self, session: str, hid: str, events: Sequence[Event], default_ip: bytes | None = None
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
        """
        cache = self._cache
        with self._transaction():
            room = self.max_events - int(cache.get(_PENDING, 0))
            room_bytes = self.max_bytes - int(cache.get(_PENDING_BYTES, 0))
            count = max(0, min(len(events), room))
            first = int(cache.get(f"n/{session}", 0)) + 1
            if count:
                if first + count - 1 > UINT32_MAX:
                    raise OverflowError(f"session {session} has used every nr up to {UINT32_MAX}")
                cache.set(f"n/{session}", first + count - 1)
        frames = encode_payloads(events[:count], first, default_ip)
        size = 0
        for i, frame in enumerate(frames):
            size += len(frame)
            if size > room_bytes:
                del frames[i:]
                size -= len(frame)
                break
        if frames:
            with self._transaction():
                if not self._extend_tail(session, hid, first, frames, size):
                    self._put_chunks(session, hid, first, frames)
                cache.incr(_PENDING, len(frames))
                cache.incr(_PENDING_BYTES, size)
        return Appended(first, first + len(frames) - 1, len(frames), len(events) - len(frames))

    def _put_chunks(self, session: str, hid: str, first_nr: int, frames: Sequence[bytes]) -> None:
        """Store frames numbered from ``first_nr`` on, in chunks of bounded size."""
        start = size = 0
        for i, frame in enumerate(frames):
            if i > start and (
                i - start >= self.chunk_events or size + len(frame) > self.chunk_bytes
            ):
                key = _chunk_key(session, hid, first_nr + start, i - start)
                self._cache.set(key, b"".join(frames[start:i]))
                start, size = i, 0
            size += len(frame)
        key = _chunk_key(session, hid, first_nr + start, len(frames) - start)
        self._cache.set(key, b"".join(frames[start:]))
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
        old = cache.get(key)
        if not isinstance(old, bytes):  # sent and deleted meanwhile
            return False
        cache.delete(key)
        new_key = _chunk_key(session, hid, old_first, old_count + len(frames))
        cache.set(new_key, old + b"".join(frames))
        self._tail = (new_key, old_size + size)
        return True

    # -- sending ---------------------------------------------------------------

    @_gated
    def claim(
        self,
        owner: str,
        lease_seconds: float,
        max_events: int = 500,
        max_bytes: int = 512 * 1024,
    ) -> Batch | None:
        """Lease the oldest unleased chunks of one session, up to the limits.

        Returns ``None`` when nothing is left to claim. The lease is a key
        that expires by itself after ``lease_seconds``: a process that dies
        mid-send strands nothing, its chunks are claimable again later. At
        least one chunk is claimed even if it alone exceeds a limit.
        """
        cache = self._cache
        token = f"{owner}/{time.time_ns()}"
        keys: list[str] = []
        data: list[bytes] = []
        count = size = 0
        group: tuple[str, str] | None = None
        with self._transaction():
            for key in cache.iterkeys():
                if not isinstance(key, str) or not key.startswith("e/"):
                    break
                session, hid, _, n = _parse_chunk_key(key)
                if group is not None and (session, hid) != group:
                    break
                if cache.get("l/" + key) is not None:
                    continue
                value = cache.get(key)
                if not isinstance(value, bytes):
                    continue  # deleted meanwhile
                if keys and (count + n > max_events or size + len(value) > max_bytes):
                    break
                group = (session, hid)
                keys.append(key)
                data.append(value)
                count += n
                size += len(value)
            if group is None:
                return None
            header = cache.get(f"h/{group[0]}/{group[1]}")
            if not isinstance(header, bytes):
                raise QueueCorrupt(f"queue has events of session {group[0]} but no header for them")
            for key in keys:
                cache.set("l/" + key, token, expire=lease_seconds)
        return Batch(group[0], tuple(keys), header, b"".join(data), count, token)

    @_gated
    def ack(self, batch: Batch) -> Settled:
        """Delete a batch after the collector answered 200.

        Only chunks whose lease is still ``batch.token`` are deleted: if the
        lease expired and another sender took a chunk over, that sender owns
        it now.
        """
        return self.settle(batch, [True] * batch.count)

    @_gated
    def settle(self, batch: Batch, verdicts: Sequence[bool | None]) -> Settled:
        """Apply a verdict per payload of ``batch`` (in order), in one transaction.

        True: delivered, deleted. False: refused by the collector (400),
        moved to the rejected area (kept on disk, see :meth:`retry_rejected`).
        None: not known, stored again as pending. Chunks whose lease is no
        longer ours are left alone.
        """
        cache = self._cache
        sent = resent = rejected = freed = 0
        frames = iter(zip(batch.frames(), verdicts, strict=True))
        with self._transaction():
            for key in batch.keys:
                session, hid, _, n = _parse_chunk_key(key)
                mine = cache.get("l/" + key) == batch.token
                chunk = [next(frames) for _ in range(n)]
                if not mine:
                    continue
                was_sent = cache.get("m/" + key) is not None
                for key_ in (key, "l/" + key, "m/" + key):
                    cache.delete(key_)
                keep: list[tuple[int, bytes]] = []
                for (nr, frame), verdict in chunk:
                    if verdict is None:
                        keep.append((nr, frame))
                        continue
                    freed += len(frame)
                    if verdict:
                        sent += 1
                        resent += was_sent
                    else:
                        rejected += 1
                        cache.set(f"r/{session}/{hid}/{nr:010d}/1", frame)
                for run_first, run in _runs(keep):
                    self._put_chunks(session, hid, run_first, run)
            if sent + rejected:
                cache.incr(_PENDING, -(sent + rejected))
                cache.incr(_PENDING_BYTES, -freed)
            if rejected:
                cache.incr(_REJECTED, rejected)
            if sent:
                cache.set(_LAST_SYNC, _now_ms())
        return Settled(sent, resent, rejected)

    @_gated
    def release(self, batch: Batch, maybe_sent: bool = False) -> None:
        """Give a batch back unsent (any answer but 200): drop our leases only.

        ``maybe_sent``: the request went out but no answer came (a timeout or
        a reset), so the collector may have stored it; a later delivery of
        these chunks is then counted as a resend.
        """
        cache = self._cache
        with self._transaction():
            for key in batch.keys:
                if cache.get("l/" + key) == batch.token:
                    cache.delete("l/" + key)
                    if maybe_sent:
                        cache.set("m/" + key, 1)

    @_gated
    def renew(self, batch: Batch, lease_seconds: float) -> None:
        """Extend our leases on ``batch`` (a long bisection needs more time)."""
        cache = self._cache
        with self._transaction():
            for key in batch.keys:
                if cache.get("l/" + key) == batch.token:
                    cache.set("l/" + key, batch.token, expire=lease_seconds)

    # -- the rejected area -----------------------------------------------------

    @_gated
    def rejected_count(self) -> int:
        """Events set aside after the collector refused them (400)."""
        return int(self._cache.get(_REJECTED, 0))

    @_gated
    def retry_rejected(self) -> int:
        """Move every rejected event back to pending; return how many moved."""
        moved = freed = 0
        cache = self._cache
        with self._transaction():
            for key in list(self._keys_with("r/")):
                value = cache.get(key)
                cache.delete(key)
                if isinstance(value, bytes):
                    cache.set("e/" + key[2:], value)
                    moved += 1
                    freed += len(value)
            if moved:
                cache.incr(_REJECTED, -moved)
                cache.incr(_PENDING, moved)
                cache.incr(_PENDING_BYTES, freed)
        return moved

    def iter_events(self, rejected: bool = False) -> Iterator[tuple[str, bytes, int, bytes]]:
        """(session, header, nr, framed payload) of every pending (or rejected) event."""
        prefix = "r/" if rejected else "e/"
        for key in self._keys_with(prefix):
            session, hid, first, _ = _parse_chunk_key(key)
            value, header = self._get(key), self._get(f"h/{session}/{hid}")
            if not isinstance(value, bytes) or not isinstance(header, bytes):
                continue
            for i, frame in enumerate(iter_frames(value)):
                yield session, header, first + i, frame

    # -- reading ---------------------------------------------------------------

    @_gated
    def pending_count(self) -> int:
        """Unsent events (leased ones included)."""
        return int(self._cache.get(_PENDING, 0))

    @_gated
    def pending_bytes(self) -> int:
        """Bytes of the unsent payloads."""
        return int(self._cache.get(_PENDING_BYTES, 0))

    @_gated
    def last_sync(self) -> float:
        """Epoch seconds of the last 200 (or of the queue's creation)."""
        return int(self._cache.get(_LAST_SYNC, 0)) / 1000

    @_gated
    def last_numbers(self) -> dict[str, int]:
        """The last ``nr`` given in every session this folder has seen."""
        return {key[2:]: int(self._cache.get(key, 0)) for key in self._keys_with("n/")}

    @_gated
    def sessions(self) -> list[SessionInfo]:
        """Per session: unsent and leased events, bytes and the oldest ``nr``."""
        out: dict[str, list[int]] = {}
        for key in self._keys_with("e/"):
            session, _, first_nr, n = _parse_chunk_key(key)
            info = out.setdefault(session, [0, 0, 0, first_nr])
            info[0] += n
            if self._cache.get("l/" + key) is not None:
                info[1] += n
            value = self._cache.get(key)
            info[2] += len(value) if isinstance(value, bytes) else 0
            info[3] = min(info[3], first_nr)
        return [SessionInfo(s, *v) for s, v in out.items()]

    @_gated
    def _keys_with(self, prefix: str) -> list[str]:
        # iterkeys pages through the index 100 keys at a time; only the keys
        # are kept (a chunk key per up to 500 events), never the values.
        return [k for k in self._cache.iterkeys() if isinstance(k, str) and k.startswith(prefix)]

    @_gated
    def _get(self, key: str) -> Any:
        return self._cache.get(key)

    @_gated
    def close(self) -> None:
        """Close this thread's SQLite connection (others close with their threads)."""
        self._cache.close()
