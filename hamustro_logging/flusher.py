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
* the **send** thread delivers: it wakes when the spool stored events, on
  ``flush()``, on the spec's retention timer and when a backoff ends, and
  sends while a trigger holds (``ClientTracker.is_due``).

With ``sender="agent"`` (and in a forked child, which leaves its events to
the process that built the handler) there is no thread at all: ``put`` only
writes the journal, and ``hamustro-logging agent`` (or that process) moves
and sends.

When more than ``max_buffer`` events wait in the journal, ``put`` waits for
the spool to move some (``on_full="wait"``, bounded by ``full_timeout``), so
a producer faster than the disk runs at the disk's pace; it never waits when
the journal cannot be written (a full disk), after a wait already timed out
and nothing moved since, or on the handler's own threads: those events are
dropped, counted and reported with their cause.

Neither thread logs through ``logging`` or takes a logging lock, so
``flush()`` and ``close()`` may wait for them while ``logging.shutdown()``
holds the handler's lock; every such wait has a deadline.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque

from .agent import agent_alive
from .journal import JournalMeta, JournalWriter
from .queue import Appended, sqlite_usable_after_fork
from .spool import Moved, Spool
from .tracker import ClientTracker

__all__ = ["ON_FULL", "SENDERS", "Flusher"]

#: What ``put`` may do with an event when the journal holds ``max_buffer``.
ON_FULL = ("wait", "drop")
#: Who moves and sends: the handler's own threads, or an agent process.
SENDERS = ("thread", "agent")

#: How long the send thread sleeps at most between looks at the queue: other
#: processes sharing the folder add events it is not told about.
_MAX_IDLE = 30.0
#: Look again this soon when events are due but were not all sent (other
#: processes hold leases on them).
_BUSY_POLL = 0.5
#: How often the spool looks for segments of other writers (adoption).
_SCAN = 1.0
#: Pause after the store could not be written, before the spool tries again.
_STORAGE_RETRY = 1.0
#: The spool's wait for another process's write lock, per attempt.
_SPOOL_BUSY = 1.0
#: Of stop()'s time, what is kept to give back the leases of a request in flight.
_GIVE_BACK_TIME = 0.25
#: How often an app without threads looks at how far others moved its journal.
_POLL = 0.05
#: The nr ranges this handler stored and does not yet know delivered are kept
#: for ``flush()``'s answer; past this many, neighbours are merged (the answer
#: may then be False for another process's events in between, never wrongly True).
_MAX_RANGES = 256


def _left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (monotonic), never negative; None for no deadline."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


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
        self.max_buffer = max_buffer
        self.on_full = on_full
        self.full_timeout = full_timeout
        self.name = name
        self.threads_run = sender == "thread"
        self.writer = JournalWriter(tracker.queue_dir, self._meta(), sync=sync)
        self.spool_step = Spool(
            tracker.queue_dir, lambda: tracker.queue, tracker.reporter.once,
            batch_events=tracker.max_batch_events, writer=self.writer,
        )  # fmt: skip
        self._spool_wake = threading.Event()
        self._send_wake = threading.Event()
        self._spool_lock = threading.Lock()  # one spool pass at a time
        self._room = threading.Condition(threading.Lock())  # producers waiting for room
        self._moved_seen = 0  # writer.appended - waiting, when last looked
        self._stalled_at: int | None = None  # writer.moved when a wait for room timed out
        self._dropping = False
        self._overflow: deque[bytes] = deque()  # events the journal could not take yet
        self._journal_error: str | None = None
        self._retry_journal_at = 0.0
        self._storage_error: str | None = None  # why the spool's last move failed
        self._cond = threading.Condition()  # guards the tickets below
        self._spool_requested = 0
        self._spool_done = 0
        self._spool_ok = True
        self._flush_requested = 0
        self._flush_done = 0
        self._flush_deadline: float | None = None
        self._stop_spool = False
        self._stopping = False
        self._final_send = True
        self._final_deadline: float | None = None
        self._threads: list[threading.Thread] = []
        self._since_wake = 0
        self._saw_empty = True
        self._next_scan = 0.0
        self._parent = os.getpid()
        self.forked = False  # a forked child: no threads, flush() works on the caller's thread
        self._ranges_lock = threading.Lock()
        self._ranges: list[tuple[int, int]] = []  # nr ranges stored by us, not known delivered
        self._dropped_seen = 0  # stats()'s dropped total at the last flush()
        self._drops_booked: dict[str, int] = {}  # drops already in the folder's ledger

    def _meta(self) -> JournalMeta:
        t = self.tracker
        return JournalMeta(t.session, t.header, t.destination, t.schema, self.threads_run)

    def start(self) -> None:
        if not self.threads_run:
            return
        self._threads = [
            threading.Thread(target=self._spool_loop, name=f"{self.name}-spool", daemon=True),
            threading.Thread(target=self._send_loop, name=f"{self.name}-send", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # -- called from the application's threads ---------------------------------

    def put(self, body: bytes, wait: bool = True) -> None:
        """Write one encoded event to the journal (under the handler's lock; no network I/O).

        When ``max_buffer`` events wait to be moved, waits for room (at most
        ``full_timeout``) if ``on_full`` is "wait"; otherwise drops the event,
        counts it and reports the cause. While the journal cannot be written
        (the folder unusable, no room on the disk for a new segment), events
        wait in memory, within the same ``max_buffer``, and go to the journal
        as soon as it takes them again (tried at most every ``_STORAGE_RETRY``
        seconds, by ``emit`` and ``flush``).
        """
        writer = self.writer
        if writer.appended - self._moved_seen >= self.max_buffer:
            self._moved_seen = writer.appended - writer.waiting()
            if writer.appended - self._moved_seen >= self.max_buffer and not self._room_for(wait):
                return
        if self._overflow and not self.write_overflow():
            self._keep(body)
            return
        try:
            writer.append(body)
        except OSError as exc:
            self._journal_error = f"{type(exc).__name__}: {exc}"
            self._retry_journal_at = time.monotonic() + _STORAGE_RETRY
            self._keep(body)
            return
        if self._dropping:
            self._dropping = False
            self.tracker.reporter.recovered("buffer", "events are written to the journal again")
        if self.threads_run:
            if not self._spool_wake.is_set():
                self._spool_wake.set()
        elif self.forked and os.getppid() != self._parent:
            self._take_over()

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
        through the handler), never more often than every ``_STORAGE_RETRY``.
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
            self._retry_journal_at = time.monotonic() + _STORAGE_RETRY
            return False
        self.tracker.storage_problem = None
        self.tracker.reporter.recovered("journal", "the journal is writable again")
        if self._dropping:
            self._dropping = False
            self.tracker.reporter.recovered("buffer", "events are written to the journal again")
        if self.threads_run:
            self._spool_wake.set()
        return True

    def retry_journal_now(self) -> None:
        """An explicit flush: try the journal again at once (with the handler's lock held)."""
        self._retry_journal_at = 0.0
        self.write_overflow()

    def in_memory(self) -> int:
        """Events kept in memory because the journal could not take them."""
        return len(self._overflow)

    def _room_for(self, wait: bool) -> bool:
        """The journal holds ``max_buffer`` unmoved events: wait for the movers, or drop."""
        reason = self._no_wait_reason(wait)
        if reason is None:
            moved = self.writer.moved
            deadline = time.monotonic() + self.full_timeout
            with self._room:
                while not self._has_room():
                    left = deadline - time.monotonic()
                    if left <= 0 or self._stop_spool:
                        break
                    # (without threads of its own, the movers are other processes: poll)
                    self._room.wait(left if self.threads_run else min(left, _POLL))
            if self._has_room() or self._stop_spool:
                return True  # (close() is coming: the event goes to the journal all the same)
            self._stalled_at = self.writer.moved
            reason = (
                "buffer_full",
                f"waited {self.full_timeout:g} s for room among {self.max_buffer} events "
                "waiting in the journal: "
                + (
                    "nothing was moved into the store in that time ("
                    + (
                        f"the store cannot be written: {self._storage_error})"
                        if self._storage_error
                        else "is the disk stalled, or is no sender running?)"
                    )
                    if self.writer.moved == moved and self.threads_run
                    else "the application logs faster than the store takes events"
                    if self.threads_run
                    else "is a hamustro-logging agent running on the folder?"
                ),
            )
        self._drop(*reason)
        return False

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
        if threading.current_thread() in self._threads:
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
        with self._cond:
            self._flush_requested += 1
            ticket = self._flush_requested
            self._flush_deadline = deadline
            self._send_wake.set()
            sent = self._cond.wait_for(lambda: self._flush_done >= ticket, _left(deadline))
        if not (written and sent) or self._overflow:  # (kept in memory: not even journaled)
            return False
        try:
            return self._all_mine_delivered()
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
            while self.writer.waiting() > 0 and _left(deadline) != 0:
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
            if _left(deadline) == 0:
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
            done = self._cond.wait_for(lambda: self._spool_done >= ticket, _left(deadline))
            return done and self._spool_ok

    def _note(self, done: Appended) -> None:
        """Remember the numbers this handler stored (for ``flush()``)."""
        first, last = done.first_nr, done.last_nr
        with self._ranges_lock:
            ranges = self._ranges
            if ranges and ranges[-1][1] + 1 == first:
                ranges[-1] = (ranges[-1][0], last)
            else:
                ranges.append((first, last))
            if len(ranges) > _MAX_RANGES:
                # Merge neighbours: covers more numbers, never fewer.
                self._ranges = [
                    (ranges[i][0], ranges[min(i + 1, len(ranges) - 1)][1])
                    for i in range(0, len(ranges), 2)
                ]

    def _stored(self, count: int) -> None:
        """Wake the send thread when what was moved in may have made a send due.

        Not after every move: each wake costs the send thread a look at the
        database. It is woken when the events stored since its last wake
        reach ``queue_size``, or when it last saw an empty queue (so it
        starts the retention timer).
        """
        self._since_wake += count
        if self._since_wake >= self.tracker.queue_size or self._saw_empty:
            self._since_wake = 0
            self._saw_empty = False
            self._send_wake.set()

    def _all_mine_delivered(self) -> bool:
        """True if every event this handler stored was delivered, and none was lost since.

        Ranges still pending stay for the next ``flush()``; ranges with events
        the collector refused or that were set aside as unusable make the
        answer False (said once on stderr, then forgotten: their state is
        final, ``stats()`` counts them); so does an event dropped since the
        last ``flush()`` (``stats()["dropped"]``).
        """
        tracker = self.tracker
        with self._ranges_lock:
            mine = list(self._ranges)
        fates = tracker.queue.fates(tracker.session, mine) if mine else []
        settled = {(f.first, f.last) for f in fates if not f.pending}
        lost = sum(f.rejected + f.set_aside for f in fates)
        with self._ranges_lock:
            self._ranges = [r for r in self._ranges if r not in settled]
            left = bool(self._ranges)
        dropped = sum(tracker.stats_counters.snapshot()["dropped"].values())
        newly_dropped, self._dropped_seen = dropped - self._dropped_seen, dropped
        if lost or newly_dropped:
            tracker.reporter.once(
                f"flush(): {lost} events this handler stored were refused by the collector or "
                f"set aside, and {newly_dropped} were dropped since the last flush() "
                "(see stats())"
            )
        return not (left or lost or newly_dropped)

    def wake_waiting(self) -> None:
        """close() is coming: an emit waiting for room stops waiting."""
        self._stop_spool = True
        with self._room:
            self._room.notify_all()

    def stop(self, timeout: float, final_send: bool = True) -> bool:
        """Stop both threads; the send thread makes one final attempt within ``timeout``.

        Returns True if both threads ended in time; never waits past
        ``timeout``. A send thread still in a request then gives its leases
        back at once (the batch is sent again later). What is not sent stays
        in the folder (store or journal) for the next start, or another
        process of the folder.
        """
        deadline = time.monotonic() + timeout
        spool, send = self._threads or (None, None)
        self._stop_spool = True
        self._spool_wake.set()
        with self._room:
            self._room.notify_all()
        if spool is not None:
            spool.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            self._stopping = True
            self._final_send = final_send
            self._final_deadline = deadline
        self._send_wake.set()
        if send is not None:
            send.join(max(0.0, deadline - _GIVE_BACK_TIME - time.monotonic()))
            if send.is_alive():
                self._give_back(deadline)
        finished = not any(thread.is_alive() for thread in self._threads)
        if spool is None or not spool.is_alive():
            self.spool_step.close()
            # Let go of the journal: what was not moved is adopted by the next
            # mover. Later emits (after close) write segments left to others.
            self.writer.close()
            self.writer.leave_to_others()
        return finished

    def _give_back(self, deadline: float) -> None:
        """The send thread is still in a request: release its leases, within ``deadline``."""
        give_back = self.tracker.delivery.give_back
        reporter = self.tracker.reporter

        def run() -> None:
            try:
                give_back()
            except Exception as exc:  # the database is locked or gone: leases expire
                reporter.once(f"could not give back the batch being sent: {exc!r}")

        thread = threading.Thread(target=run, name=f"{self.name}-give-back", daemon=True)
        thread.start()
        thread.join(max(0.0, deadline - time.monotonic()))

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
        self._room = threading.Condition(threading.Lock())
        self._cond = threading.Condition()
        self._ranges_lock = threading.Lock()
        self._spool_wake = threading.Event()
        self._send_wake = threading.Event()
        self._threads = []
        self.threads_run = False
        self._parent = os.getppid()

    # -- the spool thread ------------------------------------------------------

    def spool(self, deadline: float | None = None) -> bool:
        """Move this handler's journal (and, when due, others') into the store.

        False if not all of it could be moved (the reason is reported).
        """
        lock_wait = _left(deadline)
        if not self._spool_lock.acquire(timeout=-1 if lock_wait is None else lock_wait):
            return False
        try:
            busy = _SPOOL_BUSY if deadline is None else min(_SPOOL_BUSY, _left(deadline) or 0.0)
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
                with self._room:
                    self._room.notify_all()
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
                self._note(done)
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
            with self._room:
                self._room.notify_all()
            self._stored(moved.events)

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

    # -- the send thread -------------------------------------------------------

    def _idle_time(self) -> float:
        """Seconds until the next reason to look at the queue."""
        tracker = self.tracker
        if tracker.queue.pending_count() == 0:
            self._saw_empty = True
            wait = _MAX_IDLE
        elif tracker.is_due():  # due but not sent: a backoff runs, or others hold leases
            wait = max(tracker.delivery.retry_at - time.monotonic(), _BUSY_POLL)
        else:
            wait = tracker.queue.last_sync() + tracker.queue_retention * 60 - time.time()
        return min(max(wait, 0.01), _MAX_IDLE)

    def _send_loop(self) -> None:
        tracker = self.tracker
        while True:
            try:
                self._send_wake.wait(self._idle_time())
            except Exception:  # the queue may be unreadable for a moment; the spool reports it
                self._send_wake.wait(_STORAGE_RETRY)
            self._send_wake.clear()
            with self._cond:
                stopping, ticket = self._stopping, self._flush_requested
                deadline = self._final_deadline if stopping else self._flush_deadline
                final_send = self._final_send
            try:
                if stopping:
                    if final_send:
                        tracker.delivery.drain(deadline, force=True)
                elif ticket > self._flush_done:
                    tracker.delivery.drain(deadline, force=True)
                elif tracker.is_due():
                    tracker.delivery.drain()
            except Exception as exc:  # storage trouble: say so, keep the thread alive
                tracker.reporter.problem("send-loop", f"delivery failed: {exc!r}")
            with self._cond:
                self._flush_done = max(self._flush_done, ticket)
                self._cond.notify_all()
            if stopping:
                return
