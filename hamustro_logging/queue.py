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
``h/{session}/{hid}``                       the collection header, fields 1-7 (bytes)
``n/{session}``                             last ``nr`` given in the session (int)
``s/pending``, ``s/pending_bytes``          unsent events and their bytes (int)
``s/last_sync``                             epoch milliseconds of the last 200 (int)
=========================================  =======================================

``hid`` is a short hash of the header, so events keep the ``system`` and
``product_git_hash`` they were logged with even when those change between
runs without a version bump. Chunk keys sort by session, header and ``nr``,
so one scan from the front finds the oldest unsent events of a session.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import diskcache
import diskcache.core

from .wire import UINT32_MAX, Event, encode_payload, md5hex

__all__ = ["Batch", "Queue", "QueueCorrupt", "SafeDisk", "SessionInfo"]

_PENDING = "s/pending"
_PENDING_BYTES = "s/pending_bytes"
_LAST_SYNC = "s/last_sync"

#: SQLite settings. ``eviction_policy='none'``: diskcache is a cache and by
#: default evicts old items past 1 GB; a queue must never do that. Small page
#: cache and no mmap keep resident memory flat with a large backlog. Values up
#: to 1 MiB stay inside the database instead of becoming one file each.
_SETTINGS: dict[str, Any] = {
    "eviction_policy": "none",
    "statistics": 0,
    "tag_index": 0,
    "cull_limit": 10,
    "sqlite_mmap_size": 0,
    "sqlite_cache_size": 2048,
    "disk_min_file_size": 1 << 20,
}


class QueueCorrupt(ValueError):
    """The queue folder holds something this library never writes."""


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

    ``body`` is the complete ``Collection`` (header plus framed payloads).
    """

    session: str
    keys: tuple[str, ...]
    body: bytes
    count: int
    token: str


@dataclass(frozen=True)
class SessionInfo:
    """What ``Queue.sessions`` reports of one session's unsent events."""

    session: str
    pending: int
    leased: int
    bytes: int
    oldest_nr: int


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _chunk_key(session: str, hid: str, first_nr: int, count: int) -> str:
    return f"e/{session}/{hid}/{first_nr:010d}/{count}"


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
    (1, 2)
    >>> batch = q.claim("me", lease_seconds=60)
    >>> batch.count, q.pending_count()
    (2, 2)
    >>> q.ack(batch), q.pending_count()
    (2, 0)
    >>> q.close()
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        chunk_events: int = 500,
        chunk_bytes: int = 256 * 1024,
        timeout: float = 10.0,
    ) -> None:
        self.directory = os.fspath(directory)
        self.chunk_events = chunk_events
        self.chunk_bytes = chunk_bytes
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        old_umask = os.umask(0o077)  # database files 0600
        try:
            self._cache = diskcache.Cache(
                self.directory, timeout=timeout, disk=SafeDisk, **_SETTINGS
            )
            # A brand-new queue counts retention from its creation, so it does
            # not send on every event before its first sync.
            self._cache.add(_LAST_SYNC, _now_ms())
        finally:
            os.umask(old_umask)

    # -- writing ---------------------------------------------------------------

    def register_header(self, session: str, header: bytes) -> str:
        """Store a session's collection header; return its id for :meth:`append`."""
        hid = md5hex(header)[:8]
        self._cache.add(f"h/{session}/{hid}", header)
        return hid

    def append(
        self, session: str, hid: str, events: Sequence[Event], default_ip: bytes | None = None
    ) -> tuple[int, int]:
        """Number and store ``events`` in one transaction; return the first and last ``nr``.

        The numbers come from one atomic counter per session, so they are
        unique even when several processes share the folder.
        """
        if not events:
            raise ValueError("append needs at least one event")
        cache = self._cache
        with cache.transact():
            last = cache.incr(f"n/{session}", len(events))
            first = last - len(events) + 1
            if last > UINT32_MAX:
                raise OverflowError(f"session {session} has used every nr up to {UINT32_MAX}")
            total = 0
            chunk: list[bytes] = []
            chunk_first = nr = first
            size = 0
            for event in events:
                frame = encode_payload(event, nr, default_ip)
                if chunk and (
                    len(chunk) >= self.chunk_events or size + len(frame) > self.chunk_bytes
                ):
                    cache.set(_chunk_key(session, hid, chunk_first, len(chunk)), b"".join(chunk))
                    chunk, chunk_first, size = [], nr, 0
                chunk.append(frame)
                size += len(frame)
                total += len(frame)
                nr += 1
            cache.set(_chunk_key(session, hid, chunk_first, len(chunk)), b"".join(chunk))
            cache.incr(_PENDING, len(events))
            cache.incr(_PENDING_BYTES, total)
        return first, last

    # -- sending ---------------------------------------------------------------

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
        with cache.transact():
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
        return Batch(group[0], tuple(keys), header + b"".join(data), count, token)

    def ack(self, batch: Batch) -> int:
        """Delete a batch after the collector answered 200; return how many events went.

        Only chunks whose lease is still ``batch.token`` are deleted: if the
        lease expired and another sender took a chunk over, that sender owns
        it now.
        """
        cache = self._cache
        deleted = freed = 0
        with cache.transact():
            for key in batch.keys:
                if cache.get("l/" + key) != batch.token:
                    continue
                value = cache.get(key)
                cache.delete(key)
                cache.delete("l/" + key)
                deleted += _parse_chunk_key(key)[3]
                freed += len(value) if isinstance(value, bytes) else 0
            if deleted:
                cache.incr(_PENDING, -deleted)
                cache.incr(_PENDING_BYTES, -freed)
            cache.set(_LAST_SYNC, _now_ms())
        return deleted

    def release(self, batch: Batch) -> None:
        """Give a batch back unsent (any answer but 200): drop our leases only."""
        cache = self._cache
        with cache.transact():
            for key in batch.keys:
                if cache.get("l/" + key) == batch.token:
                    cache.delete("l/" + key)

    # -- reading ---------------------------------------------------------------

    def pending_count(self) -> int:
        """Unsent events (leased ones included)."""
        return int(self._cache.get(_PENDING, 0))

    def pending_bytes(self) -> int:
        """Bytes of the unsent payloads."""
        return int(self._cache.get(_PENDING_BYTES, 0))

    def last_sync(self) -> float:
        """Epoch seconds of the last 200 (or of the queue's creation)."""
        return int(self._cache.get(_LAST_SYNC, 0)) / 1000

    def last_numbers(self) -> dict[str, int]:
        """The last ``nr`` given in every session this folder has seen."""
        return {key[2:]: int(self._cache.get(key, 0)) for key in self._keys_with("n/")}

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

    def _keys_with(self, prefix: str) -> Iterator[str]:
        # iterkeys pages through the index 100 keys at a time: the backlog is
        # never read into memory at once.
        for key in self._cache.iterkeys():
            if isinstance(key, str) and key.startswith(prefix):
                yield key

    def close(self) -> None:
        """Close this thread's SQLite connection (others close with their threads)."""
        self._cache.close()
