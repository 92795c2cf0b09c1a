"""The handler's background work: move the journal into the store, and send.

``put`` (called by ``emit``) appends the encoded event to the handler's
journal segment (:mod:`hamustro_logging.journal`): when it returns, the
event is in a file that outlives the process. Then, with ``sender="thread"``
(the default), two daemon threads per handler, no module-level state:

* the **spool** thread moves the journal into the store
  (:mod:`hamustro_logging.spool`), a chunk (``max_batch_events``) per
  transaction: it wakes on the first event written after it went idle, and
  every ``_SCAN`` seconds it also adopts segments whose writer is gone (a
  process that was killed, or ended without closing its handler) and moves
  the segments of live writers that leave it to others (forked children,
  ``sender="agent"`` apps);
* the **send** thread (:mod:`hamustro_logging.sender`) delivers: it wakes
  when the spool stored events, on ``flush()``, on the spec's retention
  timer and when a backoff ends, and sends while a trigger holds
  (``ClientTracker.is_due``).

With ``sender="agent"`` (and in a forked child, which leaves its events to
the process that built the handler) there is no thread at all: ``put`` only
writes the journal, and ``hamustro-logging agent`` (or that process) moves
and sends.

What ``put`` does when the journal is full or cannot be written is the
job of :mod:`hamustro_logging.intake`; what ``flush()`` answers for, of
:mod:`hamustro_logging.ranges`.

Neither thread logs through ``logging`` or takes a logging lock, so
``flush()`` and ``close()`` may wait for them while ``logging.shutdown()``
holds the handler's lock; every such wait has a deadline.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

from .agent import agent_alive
from .intake import ON_FULL, Intake
from .journal import JournalMeta, JournalWriter
from .queue import sqlite_usable_after_fork
from .ranges import StoredRanges
from .sender import SendThread, seconds_left
from .spool import Moved, Spool
from .tracker import ClientTracker

__all__ = ["ON_FULL", "SENDERS", "Flusher"]
#: Who moves and sends: the handler's own threads, or an agent process.
SENDERS = ("thread", "agent")

#: How often the spool looks for segments of other writers (adoption).
_SCAN = 1.0
#: Pause after the store could not be written, before the spool tries again.
_STORAGE_RETRY = 1.0
#: The spool's wait for another process's write lock, per attempt.
_SPOOL_BUSY = 1.0
#: How often an app without threads looks at how far others moved its journal.
_POLL = 0.05


class Flusher:
    """The journal, and the spool and send threads, of one handler.

    ``put`` is called from the application's threads under the handler's
    lock; ``flush`` from the application's threads; ``stop`` from
    ``close()``; ``forget_after_fork`` in a forked child.
    """

    def __init__(
        self,
        tracker: ClientTracker,
        max_buffer: int,
        name: str = "hamustro",
        *,
        on_full: str = "wait",
        full_timeout: float = 5.0,
        sender: str = "thread",
        sync: bool = False,
    ) -> None:
        self.tracker = tracker
        self.name = name
        self.threads_run = sender == "thread"
        self.writer = JournalWriter(tracker.queue_dir, self._meta(), sync=sync)
        self.intake = Intake(
            tracker, self.writer, max_buffer, on_full=on_full, full_timeout=full_timeout,
            movers_here=lambda: self.threads_run,
            on_own_thread=lambda: threading.current_thread() in self._threads,
            store_error=lambda: self._storage_error,
        )  # fmt: skip
        self.ranges = StoredRanges(tracker)
        self.sender = SendThread(tracker, name)
        self.spool_step = Spool(
            tracker.queue_dir, lambda: tracker.queue, tracker.reporter.once,
            batch_events=tracker.max_batch_events, writer=self.writer,
        )  # fmt: skip
        self._spool_wake = threading.Event()
        self._spool_lock = threading.Lock()  # one spool pass at a time
        self._storage_error: str | None = None  # why the spool's last move failed
        self._cond = threading.Condition()  # guards the spool's tickets below
        self._spool_requested = 0
        self._spool_done = 0
        self._spool_ok = True
        self._stop_spool = False
        self._threads: list[threading.Thread] = []
        self._next_scan = 0.0
        self._parent = os.getpid()
        self.forked = False  # a forked child: no threads, flush() works on the caller's thread
        self._drops_booked: dict[str, int] = {}  # drops already in the folder's ledger

    def _meta(self) -> JournalMeta:
        t = self.tracker
        return JournalMeta(t.session, t.header, t.destination, t.schema, self.threads_run)

    def start(self) -> None:
        if not self.threads_run:
            return
        spool = threading.Thread(target=self._spool_loop, name=f"{self.name}-spool", daemon=True)
        spool.start()
        self.sender.start()
        assert self.sender.thread is not None
        self._threads = [spool, self.sender.thread]

    # -- called from the application's threads ---------------------------------

    def put(self, body: bytes, wait: bool = True) -> None:
        """Write one encoded event to the journal (under the handler's lock; no network I/O).

        See :meth:`Intake.put <hamustro_logging.intake.Intake.put>` for what
        happens when the journal is full or cannot be written.
        """
        self.intake.put(body, wait)
        if self.threads_run:
            if not self._spool_wake.is_set():
                self._spool_wake.set()
        elif self.forked and os.getppid() != self._parent:
            self._take_over()

    def retry_journal_now(self) -> None:
        """An explicit flush: try the journal again at once (with the handler's lock held)."""
        if self.intake.retry_journal_now() and self.threads_run:
            self._spool_wake.set()

    def in_memory(self) -> int:
        """Events kept in memory because the journal could not take them."""
        return self.intake.in_memory()

    def _take_over(self) -> None:
        """A forked child whose parent ended: nobody else moves its journal now; do it here."""
        self.forked = False
        if not sqlite_usable_after_fork():
            return  # never SQLite here: an agent or the next start moves it
        self.writer.leave_to_writer()
        self.threads_run = True
        self.start()

    def flush(self, timeout: float | None) -> bool:
        """Move the journal into the store, then have everything sent.

        Returns True if every event this handler wrote before the call was
        delivered (other processes sharing the folder may still have events
        pending: they are theirs to send).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.threads_run:
            return self._flush_by_others(deadline)
        self._next_scan = 0.0  # others' journals (forked children) are moved in too
        written = self.write_buffer(deadline)
        sent = self.sender.flush(deadline)
        if not (written and sent) or self.intake.in_memory():  # (not even journaled)
            return False
        try:
            return self.ranges.all_delivered()
        except Exception:  # the store is unusable right now; the spool reports why
            return False

    def _flush_by_others(self, deadline: float | None) -> bool:
        """No threads here: have the journal moved and everything sent, within ``deadline``.

        A forked child moves and sends on the caller's thread (an explicit
        flush may do I/O); with ``sender="agent"`` it waits for the agent.
        True once this journal is moved and the folder holds nothing unsent
        (stricter than "mine": never wrongly True).
        """
        reporter = self.tracker.reporter
        if not sqlite_usable_after_fork():
            while self.writer.waiting() > 0 and seconds_left(deadline) != 0:
                time.sleep(_POLL)
            reporter.once(
                "flush() cannot tell whether events were delivered in a process forked while "
                "another thread used the queue's database; the parent process sends them"
            )
            return False
        if self.forked:
            self.spool(deadline)
            with contextlib.suppress(Exception):
                self.tracker.delivery.drain(deadline, force=True)
        elif not agent_alive(self.tracker.queue_dir):
            reporter.once(
                f"flush(): no hamustro-logging agent runs on {self.tracker.queue_dir} "
                "(sender='agent'); the events wait in the folder until one runs"
            )
            return False
        while True:
            try:
                if self.writer.waiting() == 0 and self.tracker.queue.pending_count() == 0:
                    return True
            except Exception:
                return False
            if seconds_left(deadline) == 0:
                return False
            time.sleep(_POLL)

    def write_buffer(self, deadline: float | None) -> bool:
        """Have everything in this handler's journal moved into the store by ``deadline``."""
        spool = self._threads[0] if self._threads else None
        if spool is None or not spool.is_alive() or self._stop_spool:
            return self.spool(deadline)
        with self._cond:
            self._spool_requested += 1
            ticket = self._spool_requested
        self._spool_wake.set()
        with self._cond:
            done = self._cond.wait_for(lambda: self._spool_done >= ticket, seconds_left(deadline))
            return done and self._spool_ok

    def wake_waiting(self) -> None:
        """close() is coming: an emit waiting for room stops waiting."""
        self._stop_spool = True
        self.intake.closing()

    def stop(self, timeout: float, final_send: bool = True) -> bool:
        """Stop both threads; the send thread makes one final attempt within ``timeout``.

        Returns True if both threads ended in time; never waits past
        ``timeout``. A send thread still in a request then gives its leases
        back at once (the batch is sent again later). What is not sent stays
        in the folder (store or journal) for the next start, or another
        process of the folder.
        """
        deadline = time.monotonic() + timeout
        spool = self._threads[0] if self._threads else None
        self._stop_spool = True
        self._spool_wake.set()
        self.intake.closing()
        if spool is not None:
            spool.join(max(0.0, deadline - time.monotonic()))
        sent = self.sender.stop(deadline, final_send)
        finished = sent and (spool is None or not spool.is_alive())
        if spool is None or not spool.is_alive():
            self.spool_step.close()
            # Let go of the journal: what was not moved is adopted by the next
            # mover. Later emits (after close) write segments left to others.
            self.writer.close()
            self.writer.leave_to_others()
        return finished

    def forget_after_fork(self) -> None:
        """In a forked child: let go of the parent's journal; the parent moves this one's.

        The child starts no thread: the process that built the handler moves
        and sends its events, unless it ends first (see ``put``).
        """
        self.writer.forget()
        self.writer.leave_to_others()
        self.forked = True
        # Locks a parent thread held at the fork stay held in the child: new ones.
        self._spool_lock = threading.Lock()
        self.intake.forget_after_fork()
        self.ranges.forget_after_fork()
        self.sender.forget_after_fork()
        self._cond = threading.Condition()
        self._spool_wake = threading.Event()
        self._threads = []
        self.threads_run = False
        self._parent = os.getppid()

    # -- the spool thread ------------------------------------------------------

    def spool(self, deadline: float | None = None) -> bool:
        """Move this handler's journal (and, when due, others') into the store.

        False if not all of it could be moved (the reason is reported).
        """
        lock_wait = seconds_left(deadline)
        if not self._spool_lock.acquire(timeout=-1 if lock_wait is None else lock_wait):
            return False
        try:
            busy = (
                _SPOOL_BUSY if deadline is None else min(_SPOOL_BUSY, seconds_left(deadline) or 0.0)
            )
            try:
                moved = self.spool_step.move_mine(busy)
                if time.monotonic() >= self._next_scan:
                    self._next_scan = time.monotonic() + _SCAN
                    others = self.spool_step.move_others(busy)
                    moved.events += others.events
            except Exception as exc:
                self._storage_error = f"{type(exc).__name__}: {exc}"
                self.tracker.storage_problem = self._storage_error
                self.tracker.reporter.problem(
                    "store", f"cannot move the journal into the store in "
                    f"{self.tracker.queue_dir}: {exc!r}; events wait in the journal",
                )  # fmt: skip
                self.intake.moved()
                return False
            self._account(moved)
            self._book_drops()
            if self._storage_error is not None:
                self._storage_error = None
                self.tracker.storage_problem = None
                self.tracker.reporter.recovered("store", "the store is writable again")
            return self.writer.waiting() == 0
        finally:
            self._spool_lock.release()

    def _book_drops(self) -> None:
        """Add the events this handler dropped before they reached the store to the folder's ledger.

        (``queue_full`` drops are booked by the store itself, with its rows.)
        Best effort: counts not booked yet die with the process.
        """
        dropped = self.tracker.stats_counters.snapshot()["dropped"]
        delta = {
            f"dropped/{reason}": n - self._drops_booked.get(reason, 0)
            for reason, n in dropped.items()
            if reason != "queue_full" and n > self._drops_booked.get(reason, 0)
        }
        if not delta:
            return
        try:
            self.tracker.queue.add_to_ledger(delta)
        except Exception:  # the store is unusable now: booked at a later pass
            return
        self._drops_booked = dict(dropped)

    def _account(self, moved: Moved) -> None:
        stored = dropped = 0
        for done in moved.mine:
            stored += done.stored
            dropped += done.dropped
            if done.stored:
                self.ranges.note(done)
        counters = self.tracker.stats_counters
        counters.add("queued", stored)
        if dropped:
            counters.drop("queue_full", dropped)
            self.tracker.reporter.problem(
                "queue_full",
                f"the queue in {self.tracker.queue_dir} is full; new events are dropped "
                "until it drains",
            )
        elif stored:
            self.tracker.reporter.recovered("queue_full", "the queue has room again")
        if moved.events:
            self.intake.moved()
            self.sender.stored(moved.events)

    def _spool_loop(self) -> None:
        tracker = self.tracker
        # Open the store now (it also reads the stored user): never on the
        # application's thread, where a damaged or locked database would wait.
        try:
            _ = tracker.queue
        except Exception as exc:
            tracker.reporter.problem(
                "store", f"cannot open the queue in {tracker.queue_dir}: {exc!r}"
            )
        tracker.refresh_ip()
        while True:
            self._spool_wake.wait(_SCAN)
            self._spool_wake.clear()
            with self._cond:
                ticket = self._spool_requested
            tracker.refresh_ip()  # outside the spool lock: flush() never waits on DNS
            stored = self.spool()
            with self._cond:
                self._spool_done, self._spool_ok = ticket, stored
                self._cond.notify_all()
            if self._stop_spool:
                return
            if not stored and self._storage_error is not None:
                self._spool_wake.wait(_STORAGE_RETRY)  # a flush() or stop() cuts it short
                self._spool_wake.set()
