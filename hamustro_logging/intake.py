"""The application's side of a handler's journal: take an event, wait for room, or drop it.

Who calls what: :meth:`Intake.put`, :meth:`Intake.write_overflow` and
:meth:`Intake.retry_journal_now` run on the application's threads under the
handler's lock (one caller at a time); :meth:`Intake.moved` is called by
whoever moved this journal's events into the store (the spool thread, or a
flush on the caller's thread), :meth:`Intake.closing` by ``close()``.

``put`` appends the encoded event to the journal
(:class:`~hamustro_logging.journal.JournalWriter`): when it returns, the
event is in a file that outlives the process. When more than ``max_buffer``
events wait in the journal to be moved, it waits for the movers
(``on_full="wait"``, bounded by ``full_timeout``), so a producer faster than
the disk runs at the disk's pace; it never waits when told not to, after a
wait already timed out and nothing moved since, on the handler's own threads,
or with ``on_full="drop"``: those events are dropped, counted and reported
with their cause. While the journal cannot be written at all (the folder
unusable, no room on the disk for a new segment), events wait in memory,
within the same ``max_buffer``, and go to the journal as soon as it takes
them again.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from .journal import JournalWriter
from .tracker import ClientTracker

__all__ = ["ON_FULL", "Intake"]

#: What ``put`` may do with an event when the journal holds ``max_buffer``.
ON_FULL = ("wait", "drop")

#: Pause after the journal could not be written, before trying it again.
_JOURNAL_RETRY = 1.0
#: How often a producer waiting for room looks again when the movers are
#: other processes (nobody here notifies it).
_POLL = 0.05


class Intake:
    """Takes the events of one handler into its journal (see the module)."""

    def __init__(
        self,
        tracker: ClientTracker,
        writer: JournalWriter,
        max_buffer: int,
        *,
        on_full: str = "wait",
        full_timeout: float = 5.0,
        movers_here: Callable[[], bool] = lambda: True,
        on_own_thread: Callable[[], bool] = lambda: False,
        store_error: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.tracker = tracker
        self.writer = writer
        self.max_buffer = max_buffer
        self.on_full = on_full
        self.full_timeout = full_timeout
        # True while this process's own threads move the journal (they notify
        # ``moved``); False when other processes do (an agent, the parent).
        self._movers_here = movers_here
        self._on_own_thread = on_own_thread
        self._store_error = store_error
        self._room = threading.Condition(threading.Lock())  # producers waiting for room
        self._closing = False
        self._moved_seen = 0  # writer.appended - waiting, when last looked
        self._stalled_at: int | None = None  # writer.moved when a wait for room timed out
        self._dropping = False
        self._overflow: deque[bytes] = deque()  # events the journal could not take yet
        self._journal_error: str | None = None
        self._retry_journal_at = 0.0

    def put(self, body: bytes, wait: bool = True) -> bool:
        """Take one encoded event; True if it went to the journal (no network I/O).

        False when it was dropped (counted, said) or kept in memory because
        the journal cannot be written now.
        """
        writer = self.writer
        if writer.appended - self._moved_seen >= self.max_buffer:
            self._moved_seen = writer.appended - writer.waiting()
            if writer.appended - self._moved_seen >= self.max_buffer and not self._room_for(wait):
                return False
        if self._overflow and not self.write_overflow():
            self._keep(body)
            return False
        try:
            writer.append(body)
        except OSError as exc:
            self._journal_error = f"{type(exc).__name__}: {exc}"
            self._retry_journal_at = time.monotonic() + _JOURNAL_RETRY
            self._keep(body)
            return False
        if self._dropping:
            self._dropping = False
            self.tracker.reporter.recovered("buffer", "events are written to the journal again")
        return True

    def _keep(self, body: bytes) -> None:
        """The journal cannot take events now: keep this one in memory, within ``max_buffer``."""
        if len(self._overflow) + self.writer.waiting() >= self.max_buffer:
            self._drop(
                "storage",
                f"cannot write the journal in {self.writer.directory} ({self._journal_error}) "
                f"and {len(self._overflow)} events wait in memory",
            )
            return
        self._overflow.append(body)
        self.tracker.storage_problem = self._journal_error
        self.tracker.reporter.problem(
            "journal",
            f"cannot write the journal in {self.writer.directory} ({self._journal_error}); "
            "events wait in memory until it can be written",
        )

    def write_overflow(self) -> bool:
        """Move events kept in memory to the journal, in order; True if none is left.

        Called with the handler's lock held (by ``put``, and by ``flush``
        through the handler), never more often than every ``_JOURNAL_RETRY``.
        """
        overflow = self._overflow
        if not overflow:
            return True
        if time.monotonic() < self._retry_journal_at:
            return False
        try:
            while overflow:
                self.writer.append(overflow[0])
                overflow.popleft()
        except OSError as exc:
            self._journal_error = f"{type(exc).__name__}: {exc}"
            self._retry_journal_at = time.monotonic() + _JOURNAL_RETRY
            return False
        self.tracker.storage_problem = None
        self.tracker.reporter.recovered("journal", "the journal is writable again")
        if self._dropping:
            self._dropping = False
            self.tracker.reporter.recovered("buffer", "events are written to the journal again")
        return True

    def retry_journal_now(self) -> bool:
        """An explicit flush: try the journal again at once (with the handler's lock held)."""
        self._retry_journal_at = 0.0
        return self.write_overflow()

    def in_memory(self) -> int:
        """Events kept in memory because the journal could not take them."""
        return len(self._overflow)

    # -- room --------------------------------------------------------------------

    def moved(self) -> None:
        """Events were moved into the store (or moving failed): producers look again."""
        with self._room:
            self._room.notify_all()

    def closing(self) -> None:
        """close() is coming: an emit waiting for room stops waiting."""
        self._closing = True
        self.moved()

    def forget_after_fork(self) -> None:
        """In a forked child: a lock a parent thread held at the fork stays held; a new one."""
        self._room = threading.Condition(threading.Lock())

    def _room_for(self, wait: bool) -> bool:
        """The journal holds ``max_buffer`` unmoved events: wait for the movers, or drop."""
        reason = self._no_wait_reason(wait)
        if reason is None:
            moved = self.writer.moved
            deadline = time.monotonic() + self.full_timeout
            with self._room:
                while not self._has_room():
                    left = deadline - time.monotonic()
                    if left <= 0 or self._closing:
                        break
                    # (without threads of its own, the movers are other processes: poll)
                    self._room.wait(left if self._movers_here() else min(left, _POLL))
            if self._has_room() or self._closing:
                return True  # (close() is coming: the event goes to the journal all the same)
            self._stalled_at = self.writer.moved
            reason = ("buffer_full", self._timed_out_cause(moved))
        self._drop(*reason)
        return False

    def _timed_out_cause(self, moved_before: int) -> str:
        """Why a wait for room timed out, as said on stderr."""
        head = (
            f"waited {self.full_timeout:g} s for room among {self.max_buffer} events "
            "waiting in the journal: "
        )
        if not self._movers_here():
            return head + "is a hamustro-logging agent running on the folder?"
        if self.writer.moved != moved_before:
            return head + "the application logs faster than the store takes events"
        error = self._store_error()
        return head + (
            f"nothing was moved into the store in that time (the store cannot be written: {error})"
            if error
            else "nothing was moved into the store in that time (is the disk stalled, or is no "
            "sender running?)"
        )

    def _has_room(self) -> bool:
        writer = self.writer
        self._moved_seen = writer.appended - writer.waiting()
        return writer.appended - self._moved_seen < self.max_buffer

    def _drop(self, kind: str, message: str) -> None:
        self.tracker.stats_counters.drop(kind)
        self._dropping = True
        self.tracker.reporter.problem("buffer", f"{message}; dropping new events")

    def _no_wait_reason(self, wait: bool) -> tuple[str, str] | None:
        """Why an event that finds the journal full must be dropped now: (reason, cause)."""
        if self.on_full == "drop":
            return "buffer_full", (
                f"{self.max_buffer} events wait in the journal to be moved (on_full='drop')"
            )
        if not wait or self.full_timeout <= 0:
            return "buffer_full", f"{self.max_buffer} events wait in the journal to be moved"
        if self._on_own_thread():
            return "buffer_full", (
                f"{self.max_buffer} events wait in the journal and this one was logged on the "
                "handler's own thread, which never waits"
            )
        if self._stalled_at is not None:
            if self._stalled_at == self.writer.moved:
                return "buffer_full", (
                    f"nothing was moved from the {self.max_buffer} events waiting in the journal "
                    f"since a wait of {self.full_timeout:g} s for room timed out"
                )
            self._stalled_at = None
        return None
