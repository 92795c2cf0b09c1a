"""Appending: number events and store them in chunks, from the app or from a journal segment.

Each session's numbers (``nr``) come from one counter (``n/{session}``),
taken in a transaction, so they are unique even when several processes
share the folder; a number handed out is never handed out again, not even
by a database that replaced a deleted or corrupt one (:meth:`Appender.carry_numbers`).
Events are stored in chunks (``e/``) of bounded size; the chunk written last
grows while its numbers run on (:meth:`Appender.extend_tail`). A full queue
refuses new events rather than deleting old ones, and a disk under the
free-space floor refuses them all (:class:`~hamustro_logging.store.errors.DiskSpaceLow`).

Who calls what:

* ``Queue.append``: ``ClientTracker.track_event``, on the application's
  thread (or the CLI's);
* ``Queue.append_journal``, ``Queue.finish_journal`` and
  ``Queue.journal_offsets``: whoever moves journal segments in
  (:mod:`hamustro_logging.spool`: the handler's spool thread, the agent,
  ``ClientTracker.flush``, the CLI); the ``j/{segment}`` rows are written
  here, in the transaction that stores the events they count;
* ``put_chunks`` also stores the frames a settle keeps
  (:mod:`~hamustro_logging.store.settle`), and a salvage or ``rebind``
  forgets the tail chunk (``tail = None``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..wire import UINT32_MAX, encode_payloads, number_bodies
from .counts import Books, Counters
from .db import Db, now_ms
from .errors import DiskSpaceLow, QueueCorrupt
from .keys import PENDING, PENDING_BYTES, chunk_key, chunk_parts, journal_position, parse_chunk_key
from .records import Appended

__all__ = ["NUMBER_GAP", "Appender"]

#: How far numbering jumps in a database found behind the numbers a process
#: knows (see Appender.carry_numbers): more than any app hands out between two
#: looks at its folder, far less than the 4,294,967,295 an nr can reach.
NUMBER_GAP = 1_000_000
#: A chunk written one event at a time grows by rewriting it: only up to this
#: size (about 60 typical events), so an append stays a small write.
_TAIL_BYTES = 4096
#: How long the row of a journal segment moved to its end is kept (see
#: Appender.finish_journal): far longer than any mover keeps a segment open.
_FINISHED_KEPT_MS = 24 * 3600 * 1000


class Appender:
    """Numbers and stores events for one ``Queue``, within its limits.

    The limits are the ``Queue``'s (settable there: a change holds from the
    next call). ``known``: the last ``nr`` this object handed out or saw, per
    session (never reused). ``tail``: the last chunk written, key and bytes.
    """

    def __init__(
        self,
        db: Db,
        counters: Counters,
        books: Books,
        *,
        chunk_events: int,
        chunk_bytes: int,
        max_events: int,
        max_bytes: int,
        min_free_bytes: int,
        carry_numbers: Mapping[str, int] | None,
    ) -> None:
        self._db = db
        self._counters = counters
        self._books = books
        self.chunk_events = chunk_events
        self.chunk_bytes = chunk_bytes
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.known: dict[str, int] = dict(carry_numbers or {})
        self.tail: tuple[str, int] | None = None

    # -- numbering ---------------------------------------------------------------

    def carry_numbers(self) -> None:
        """Numbering in this folder goes on after every number known to have been handed out.

        A counter behind what this process knows means the database is new
        (the folder was wiped, or a corrupt one set aside): other processes
        of the app may have handed out numbers this one never saw, so the
        counter jumps ``NUMBER_GAP`` past what it knows. The first process to
        reopen sets the jump; the others find the counter ahead and go on
        from it.
        """
        if not self.known:
            return
        db = self._db
        with db.transaction():
            for session, last in self.known.items():
                if (db.int_row(f"n/{session}") or 0) < last:
                    db.cache.set(f"n/{session}", min(last + NUMBER_GAP, UINT32_MAX // 2))

    def last_nr(self, session: str) -> int:
        """The session's last nr: its counter, else the highest stored or known (never less)."""
        value = self._db.int_row(f"n/{session}")
        highest = self.known.get(session, 0)
        if value is None:
            for prefix in (f"e/{session}/", f"r/{session}/", f"x/e/{session}/"):
                for key in self._db.keys_with(prefix):
                    parsed = parse_chunk_key(key.removeprefix("x/"))
                    if parsed is not None:
                        highest = max(highest, parsed[2] + parsed[3] - 1)
            return highest
        return max(value, highest)

    def last_numbers(self) -> dict[str, int]:
        """The last ``nr`` given in every session this folder has seen."""
        return {key[2:]: self.last_nr(key[2:]) for key in list(self._db.keys_with("n/"))}

    # -- storing -----------------------------------------------------------------

    def check_space(self) -> None:
        """Refuse to write under ``min_free_bytes`` free (SQLite's free pages count as free)."""
        if not self.min_free_bytes:
            return
        directory = self._db.directory
        st = os.statvfs(directory)
        free = st.f_bavail * st.f_frsize
        if free >= self.min_free_bytes:
            return
        # The write-ahead log keeps what it grew to until it is checkpointed:
        # give that back to the disk before refusing.
        with contextlib.suppress(sqlite3.Error):
            self._db.sql("PRAGMA wal_checkpoint(TRUNCATE)")
        st = os.statvfs(directory)
        free = st.f_bavail * st.f_frsize
        ((pages,),) = self._db.sql("PRAGMA freelist_count")
        ((page_size,),) = self._db.sql("PRAGMA page_size")
        if free + pages * page_size < self.min_free_bytes:
            raise DiskSpaceLow(
                f"only {free // 1024} KiB free on the disk of {directory}, under the "
                f"{self.min_free_bytes // 1024} KiB floor (min_free_bytes): new events are "
                "not stored until space is freed"
            )

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
        db = self._db
        self.check_space()
        with db.busy_timeout(busy_timeout):
            with db.transaction():
                cache = db.cache  # read under the gate: a salvage may have replaced it
                room = self.max_events - self._counters.get(PENDING)
                room_bytes = self.max_bytes - self._counters.get(PENDING_BYTES)
                count = max(0, min(len(events), room))
                first = self.last_nr(session) + 1
                if count:
                    if first + count - 1 > UINT32_MAX:
                        raise OverflowError(
                            f"session {session} has used every nr up to {UINT32_MAX}"
                        )
                    cache.set(f"n/{session}", first + count - 1)
                    self.known[session] = first + count - 1
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
                with db.transaction():
                    if frames:
                        if not self.extend_tail(session, hid, first, frames, size):
                            self.put_chunks(session, hid, first, frames)
                        self._counters.bump(pending=len(frames), size=size)
                    self._books.book({"stored": len(frames), "dropped/queue_full": dropped})
        return Appended(first, first + len(frames) - 1, len(frames), dropped)

    def put_chunks(
        self, session: str, hid: str, first_nr: int, frames: Sequence[bytes], attempts: int = 0
    ) -> None:
        """Store frames numbered from ``first_nr`` on, in chunks of bounded size."""
        cache = self._db.cache
        start, size = 0, sum(map(len, frames))
        if len(frames) > self.chunk_events or size > self.chunk_bytes:  # (else: one chunk)
            size = 0
            for i, frame in enumerate(frames):
                if i > start and (
                    i - start >= self.chunk_events or size + len(frame) > self.chunk_bytes
                ):
                    key = chunk_key(session, hid, first_nr + start, i - start)
                    cache.set(key, b"".join(frames[start:i]))
                    if attempts:
                        cache.set("m/" + key, attempts)
                    start, size = i, 0
                size += len(frame)
        key = chunk_key(session, hid, first_nr + start, len(frames) - start)
        cache.set(key, b"".join(frames[start:]))
        if attempts:
            cache.set("m/" + key, attempts)
        self.tail = (key, size)

    def extend_tail(
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
        if self.tail is None:
            return False
        key, old_size = self.tail
        old_session, old_hid, old_first, old_count = chunk_parts(key)
        cache = self._db.cache
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
        new_key = chunk_key(session, hid, old_first, old_count + len(frames))
        cache.set(new_key, old + b"".join(frames))
        self.tail = (new_key, old_size + size)
        return True

    # -- from a journal segment (``j/`` rows) -----------------------------------------

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
        from ..journal import START  # (journal imports nothing of the store)

        db = self._db
        self.check_space()
        key = "j/" + segment
        with db.busy_timeout(busy_timeout), db.transaction():
            value = db.int_row(key, -1 << 62)  # (a sentinel for "no row")
            if value == -1 << 62:
                value = None
            position = None if value is None else journal_position(value)
            if value is not None and position is None:  # finished: moved to its end, removed
                return Appended(0, -1, 0, 0), 0, 0
            if position is None:
                # A row this store never had: the segment is new to it, or the
                # store is (a folder wiped under a running app): its writer's
                # own process knows how far it moved it.
                position = known if known is not None else (0, 0)
            start, moved = position
            if start < START:
                start, moved = START, 0
            end, bodies = read(start)
            first = self.last_nr(session) + 1
            room = max(0, self.max_events - self._counters.get(PENDING))
            room_bytes = self.max_bytes - self._counters.get(PENDING_BYTES)
            frames = number_bodies(bodies[:room], first, schema) if bodies else []
            size = sum(map(len, frames))
            if size > room_bytes:  # keep what fits
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
                db.cache.set(f"n/{session}", last)
                self.known[session] = last
                if not self.extend_tail(session, hid, first, frames, size):
                    self.put_chunks(session, hid, first, frames)
                self._counters.bump(pending=len(frames), size=size)
            self._books.book(
                {"stored": len(frames), "dropped/queue_full": len(bodies) - len(frames)}
            )
            moved += len(bodies)
            if end != start:
                db.cache.set(key, end << 32 | moved)
        done = Appended(first, first + len(frames) - 1, len(frames), len(bodies) - len(frames))
        return done, end, moved

    def finish_journal(self, segment: str) -> None:
        """A segment moved to its end is removed: its row says so, for good.

        The row stays (as minus the time it finished, in ms) rather than
        going: a mover that opened the segment before it was removed must
        find it finished, not new. Rows finished over a day ago go.
        """
        db = self._db
        now = now_ms()
        with db.transaction():
            db.cache.set("j/" + segment, -now)
            for key in db.keys_with("j/"):
                value = db.int_row(key)
                if value is not None and value < 0 and now + value > _FINISHED_KEPT_MS:
                    db.cache.delete(key)

    def journal_offsets(self) -> dict[str, tuple[int, int]]:
        """How far each journal segment not finished was moved in: name -> (offset, events)."""
        out: dict[str, tuple[int, int]] = {}
        for key in self._db.keys_with("j/"):
            value = self._db.int_row(key)
            position = None if value is None else journal_position(value)
            if position is not None:
                out[key[2:]] = position
        return out
