"""The handler's background work: write buffered events to disk, and send them.

Two daemon threads per handler, no module-level state:

* the **spool** thread moves events from the in-memory buffer to the queue
  folder. It wakes on the first event put into an empty buffer and writes
  everything buffered by then, a chunk (``max_batch_events``) per
  transaction, so under load events are group-committed and when idle each
  is written within milliseconds. This is the durability window: events not
  yet on disk are the buffer (at most ``max_buffer``) plus the chunk being
  written (at most ``max_batch_events``).
* the **send** thread delivers: it wakes when the spool stored events, on
  ``flush()``, on the spec's retention timer and when a backoff ends, and
  sends while a trigger holds (``ClientTracker.is_due``).

When the buffer is full, ``put`` (called by ``emit``) waits for the spool
thread to take a chunk (``on_full="wait"``, bounded by ``full_timeout``), so
a producer faster than the disk is slowed to the disk's pace instead of
losing events. It never waits while the queue cannot be written (the spool's
last write failed), after a wait already timed out and the spool has taken
nothing since, or on the handler's own threads: those events are dropped,
counted and reported with their cause.

The send thread may block on the collector (bounded by the request
timeout); the spool thread never talks to the network, so a dead or slow
collector never delays getting events onto disk.

Neither thread logs through ``logging`` or takes a logging lock, so
``flush()`` and ``close()`` may wait for them while ``logging.shutdown()``
holds the handler's lock; every such wait has a deadline.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
import time
from collections import deque
from collections.abc import Sequence

import diskcache

from .queue import Appended
from .tracker import ClientTracker, TrackedEvent

__all__ = ["ON_FULL", "Flusher"]

#: What ``put`` may do with an event when the buffer is full.
ON_FULL = ("wait", "drop")

#: How long the send thread sleeps at most between looks at the queue: other
#: processes sharing the folder add events it is not told about.
_MAX_IDLE = 30.0
#: Look again this soon when events are due but were not all sent (other
#: processes hold leases on them).
_BUSY_POLL = 0.5
#: Pause after the queue could not be written, before the spool tries again.
_STORAGE_RETRY = 1.0
#: The spool thread's wait for another process's write lock, per attempt: it
#: holds the process's fork gate meanwhile, so it gives up soon and tries again.
_SPOOL_BUSY = 1.0
#: Pause after another process held the write lock, before the spool tries again.
_BUSY_RETRY = 0.05
#: Of stop()'s time, what is kept to give back the leases of a request in flight.
_GIVE_BACK_TIME = 0.25
#: The nr ranges this handler stored and does not yet know delivered are kept
#: for ``flush()``'s answer; past this many, neighbours are merged (the answer
#: may then be False for another process's events in between, never wrongly True).
_MAX_RANGES = 256


def _left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (monotonic), never negative; None for no deadline."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class Flusher:
    """The spool and send threads of one handler.

    ``put``, ``store_now`` and ``flush`` are called from the application's
    threads; ``stop`` and ``write_buffer`` from ``close()`` and the exit
    hooks. The buffer is a ``deque``: ``append`` and ``popleft`` are atomic,
    so the fast path of ``put`` takes no lock.
    """

    def __init__(
        self,
        tracker: ClientTracker,
        max_buffer: int,
        name: str = "hamustro",
        *,
        on_full: str = "wait",
        full_timeout: float = 5.0,
    ) -> None:
        self.tracker = tracker
        self.max_buffer = max_buffer
        self.on_full = on_full
        self.full_timeout = full_timeout
        self.name = name
        self.buffer: deque[TrackedEvent] = deque()
        self._spool_wake = threading.Event()
        self._send_wake = threading.Event()
        self._spool_lock = threading.Lock()  # one writer of the buffer to disk at a time
        # Producers waiting for room; the spool notifies it after taking a chunk.
        self._room = threading.Condition(threading.Lock())
        self._taken = 0  # chunks the spool took from the buffer (progress, for the waiters)
        self._stalled_at: int | None = None  # _taken when a wait for room last timed out
        self._dropping = False  # a streak of dropped events is being reported
        self._storage_error: str | None = None  # why the spool's last write failed
        self._busy = False  # the spool's last write found another process's write lock
        self._writing = 0  # events taken from the buffer and being written now
        self._cond = threading.Condition()  # guards the flush counters below
        self._spool_requested = 0
        self._spool_done = 0
        self._spool_ok = True  # the spool thread's last pass wrote everything
        self._flush_requested = 0
        self._flush_done = 0
        self._flush_deadline: float | None = None
        self._stop_spool = False
        self._stopping = False  # the send thread's stop flag
        self._final_send = True
        self._final_deadline: float | None = None
        self._threads: list[threading.Thread] = []
        self._since_wake = 0  # events stored since the send thread was last woken
        self._saw_empty = True  # the send thread last found nothing to send
        self.closing = False  # close() is coming (see wake_waiting)
        self._ranges_lock = threading.Lock()
        self._ranges: list[tuple[int, int]] = []  # nr ranges stored by us, not known delivered

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._spool_loop, name=f"{self.name}-spool", daemon=True),
            threading.Thread(target=self._send_loop, name=f"{self.name}-send", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # -- called from the application's threads ---------------------------------

    def put(self, event: TrackedEvent, wait: bool = True) -> None:
        """Buffer one event for the spool thread (no I/O).

        When the buffer is full, waits for room (at most ``full_timeout``)
        if ``on_full`` is "wait" and the queue is being written; otherwise
        drops the event, counts it and reports the cause.
        """
        if len(self.buffer) < self.max_buffer:
            self._append(event)
        else:
            self._full(event, wait)

    def _append(self, event: TrackedEvent) -> None:
        self.buffer.append(event)
        if self._dropping:
            self._dropping = False
            self.tracker.reporter.recovered("buffer", "events are buffered again")
        if not self._spool_wake.is_set():
            self._spool_wake.set()

    def _full(self, event: TrackedEvent, wait: bool) -> None:
        """The buffer is full: wait for the spool thread to take a chunk, or drop."""
        buffer, tracker = self.buffer, self.tracker
        reason = self._no_wait_reason(wait)
        if reason is None:
            taken = self._taken
            with self._room:
                self._room.wait_for(
                    lambda: (
                        len(buffer) < self.max_buffer
                        or self._storage_error is not None
                        or self._stop_spool
                        or self.closing
                    ),
                    self.full_timeout,
                )
            if self.closing or (len(buffer) < self.max_buffer and self._storage_error is None):
                # (closing: close() is waiting for this emit; it writes the buffer next)
                self._append(event)
                return
            reason = self._no_wait_reason(wait)
            if reason is None:  # the wait timed out with the queue writable
                self._stalled_at = self._taken
                reason = (
                    "buffer_full",
                    f"waited {self.full_timeout:g} s for room among {self.max_buffer} events "
                    "buffered in memory: "
                    + (
                        "the spool thread wrote nothing in that time ("
                        + (
                            "another process holds the queue database's write lock)"
                            if self._busy
                            else "is the disk stalled?)"
                        )
                        if self._taken == taken
                        else "the application logs faster than the disk takes events"
                    ),
                )
        kind, message = reason
        tracker.stats_counters.drop(kind)
        self._dropping = True
        tracker.reporter.problem("buffer", f"{message}; dropping new events")

    def _no_wait_reason(self, wait: bool) -> tuple[str, str] | None:
        """Why an event that finds the buffer full must be dropped now: (reason, cause), or None."""
        if self._storage_error is not None:
            return "storage", (
                f"the queue in {self.tracker.queue_dir} cannot be written "
                f"({self._storage_error}) and {self.max_buffer} events wait in memory"
            )
        if self.on_full == "drop":
            return "buffer_full", (
                f"{self.max_buffer} events wait in memory for the disk (on_full='drop')"
            )
        if not wait or self.full_timeout <= 0:
            return "buffer_full", f"{self.max_buffer} events wait in memory for the disk"
        current = threading.current_thread()
        if current in self._threads:
            return "buffer_full", (
                f"{self.max_buffer} events wait in memory and this one was logged on the "
                "handler's own thread, which never waits"
            )
        if self._stop_spool or not self._threads or not self._threads[0].is_alive():
            return "buffer_full", (
                f"{self.max_buffer} events wait in memory and the spool thread is not running"
            )
        if self._stalled_at is not None:
            if self._stalled_at == self._taken:
                return "buffer_full", (
                    f"the spool thread took nothing from the {self.max_buffer} events in memory "
                    f"since a wait of {self.full_timeout:g} s for room timed out (is another "
                    "process holding the queue database's write lock, or is the disk stalled?)"
                )
            self._stalled_at = None
        return None

    def store_now(self, event: TrackedEvent, timeout: float | None) -> None:
        """Durable mode: write one event on the caller's thread (and wake the sender if due).

        Waits at most ``timeout`` seconds for another process's write lock
        (None: the queue's default). Raises what the store raised: the
        caller keeps the event some other way.
        """
        self._note(self._store([event], timeout))

    def _store(self, events: Sequence[TrackedEvent], busy_timeout: float | None) -> Appended:
        return self.tracker.store(events, busy_timeout=busy_timeout)

    def _note(self, done: Appended) -> None:
        """Remember the numbers this handler stored (for ``flush()``), and wake the sender."""
        if done.stored:
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
        self._stored(done.stored)

    def _stored(self, count: int) -> None:
        """Wake the send thread when what this process stored may have made a send due.

        Not after every write: each wake costs the send thread a look at the
        database, which would triple the cost of a durable ``emit``. It is
        woken when the events stored since its last wake reach
        ``queue_size``, or when it last saw an empty queue (so it starts the
        retention timer). Events stored by other processes are found by its
        own timer (at most ``_MAX_IDLE`` seconds).
        """
        self._since_wake += count
        if self._since_wake >= self.tracker.queue_size or self._saw_empty:
            self._since_wake = 0
            self._saw_empty = False
            self._send_wake.set()

    def write_buffer(self, deadline: float | None) -> bool:
        """Have everything buffered so far written to disk by ``deadline`` (monotonic).

        The spool thread writes it; this only waits. Without a spool thread
        (stopped, or never started) it writes here, bounded by ``deadline``.
        True if it was all written.
        """
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

    def flush(self, timeout: float | None) -> bool:
        """Write the buffer to disk, then have the send thread send everything.

        Returns True if every event this handler stored before the call is
        delivered (other processes sharing the folder may still have events
        pending: they are theirs to send).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        written = self.write_buffer(deadline)
        with self._cond:
            self._flush_requested += 1
            ticket = self._flush_requested
            self._flush_deadline = deadline
            self._send_wake.set()
            sent = self._cond.wait_for(lambda: self._flush_done >= ticket, _left(deadline))
        if not (written and sent):
            return False
        try:
            return self._all_mine_delivered()
        except Exception:  # the queue is unusable right now; the spool reports why
            return False

    def _all_mine_delivered(self) -> bool:
        """True if no nr this handler stored is still unsent; forgets those delivered."""
        unsent = sorted(self.tracker.queue.unsent_ranges(self.tracker.session))
        starts = [first for first, _ in unsent]
        with self._ranges_lock:
            mine = list(self._ranges)

        def waiting(first: int, last: int) -> bool:
            # The unsent ranges starting at or before `last`: does the one
            # reaching furthest reach `first`? (Chunks never overlap.)
            i = bisect.bisect_right(starts, last)
            return i > 0 and unsent[i - 1][1] >= first

        delivered = {r for r in mine if not waiting(*r)}
        with self._ranges_lock:
            self._ranges = [r for r in self._ranges if r not in delivered]
        return len(delivered) == len(mine)

    def wake_waiting(self) -> None:
        """close() is coming: an emit waiting for room stops waiting and keeps its event.

        The emit holds the handler's lock, which close() must take; without
        this, close() would first wait out ``full_timeout``.
        """
        self.closing = True
        with self._room:
            self._room.notify_all()

    def stop(self, timeout: float, final_send: bool = True) -> bool:
        """Stop both threads; the send thread makes one final attempt within ``timeout``.

        Returns True if both threads ended in time; never waits past
        ``timeout``. A send thread still in a request then gives its leases
        back at once (the batch is sent again later). What is not sent stays
        on disk for the next start.
        """
        deadline = time.monotonic() + timeout
        spool, send = self._threads or (None, None)
        # The spool first, so the final send sees every event emitted before close().
        self._stop_spool = True
        self._spool_wake.set()
        with self._room:
            self._room.notify_all()  # a producer waiting for room stops waiting
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
        return not any(thread.is_alive() for thread in self._threads)

    def _give_back(self, deadline: float) -> None:
        """The send thread is still in a request: release its leases, within ``deadline``.

        On a thread of its own, waited for until ``deadline`` at most: it
        needs the database, which another process may hold. If it does not
        finish, the leases expire by themselves.
        """
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

    def unwritten(self) -> int:
        """Events in memory, not on disk: the buffer and the chunk being written."""
        return len(self.buffer) + self._writing

    def why_unwritten(self) -> str:
        """Why events are still in memory after a deadline: for the report."""
        if self._storage_error is not None:
            return f"the queue cannot be written: {self._storage_error}"
        spool = self._threads[0] if self._threads else None
        if spool is not None and spool.is_alive():
            return (
                "the spool thread is still writing: another process may hold the queue "
                "database's write lock, or the disk is stalled"
            )
        return "the spool thread had stopped"

    # -- the spool thread ------------------------------------------------------

    def spool(self, deadline: float | None = None) -> bool:
        """Write everything buffered to disk; False if not all of it could be written.

        ``deadline`` (monotonic) bounds the wait for the spool lock and for
        another process's write lock (when the tracker supports it).
        """
        buffer = self.buffer
        lock_wait = _left(deadline)
        if not self._spool_lock.acquire(timeout=-1 if lock_wait is None else lock_wait):
            return False
        try:
            while buffer:
                busy_timeout = _SPOOL_BUSY
                if deadline is not None:
                    busy_timeout = min(busy_timeout, deadline - time.monotonic())
                    if busy_timeout <= 0:
                        return False
                # One chunk per write: short transactions leave the database to
                # the send thread between them.
                take = min(len(buffer), self.tracker.max_batch_events)
                items = [buffer.popleft() for _ in range(take)]
                self._writing = take
                with self._room:  # room for producers while this chunk is written
                    self._taken += 1
                    self._room.notify_all()
                try:
                    try:
                        done = self._store(items, busy_timeout)
                    finally:
                        self._writing = 0
                except diskcache.Timeout:  # queue.QueueBusy is one: not a storage fault
                    buffer.extendleft(reversed(items))  # keep them, in order, for the next try
                    self._busy = True
                    self.tracker.reporter.problem(
                        "store",
                        f"another process holds the write lock of the queue database in "
                        f"{self.tracker.queue_dir}; events wait in memory",
                    )
                    return False
                except Exception as exc:
                    buffer.extendleft(reversed(items))
                    self._storage_error = repr(exc)
                    with self._room:
                        self._room.notify_all()  # waiting producers: drop, do not wait
                    self.tracker.reporter.problem(
                        "store", f"cannot write the queue in {self.tracker.queue_dir}: {exc!r}"
                    )
                    return False
                if self._storage_error is not None or self._busy:
                    self._storage_error, self._busy = None, False
                    self.tracker.reporter.recovered("store", "the queue is writable again")
                self._note(done)
        finally:
            self._spool_lock.release()
        return True

    def _spool_loop(self) -> None:
        tracker = self.tracker
        # Open the queue now, not on the first event (a forked child may soon
        # exit); if it cannot be opened, the first write says why and retries.
        with contextlib.suppress(Exception):
            _ = tracker.queue
        tracker.refresh_ip()  # before the first write: events get the address
        while True:
            self._spool_wake.wait()
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
            if not stored:  # a flush() or stop() cuts the pause short
                self._spool_wake.wait(_BUSY_RETRY if self._busy else _STORAGE_RETRY)
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
