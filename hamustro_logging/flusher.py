"""The handler's background work: write buffered events to disk, and send them.

Two daemon threads per handler, no module-level state:

* the **spool** thread moves events from the in-memory buffer to the queue
  folder. It wakes on the first event put into an empty buffer and writes
  everything buffered by then in one transaction, so under load events are
  group-committed and when idle each is written within milliseconds. This
  is the durability window: an event is on disk as soon as the spool thread
  gets to it (typically well under 100 ms after ``emit`` returns).
* the **send** thread delivers: it wakes when the spool stored events, on
  ``flush()``, on the spec's retention timer and when a backoff ends, and
  sends while a trigger holds (``ClientTracker.is_due``).

The send thread may block on the collector (bounded by the request
timeout); the spool thread never talks to the network, so a dead or slow
collector never delays getting events onto disk, and ``emit`` never waits
for either thread.

Neither thread logs through ``logging`` or takes a logging lock, so
``flush()`` and ``close()`` may wait for them while ``logging.shutdown()``
holds the handler's lock.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from .tracker import ClientTracker
from .wire import Event

__all__ = ["Flusher"]

#: How long the send thread sleeps at most between looks at the queue: other
#: processes sharing the folder add events it is not told about.
_MAX_IDLE = 30.0
#: Look again this soon when events are due but were not all sent (other
#: processes hold leases on them).
_BUSY_POLL = 0.5
#: Pause after the queue could not be written, before the spool tries again.
_STORAGE_RETRY = 1.0


class Flusher:
    """The spool and send threads of one handler."""

    def __init__(self, tracker: ClientTracker, max_buffer: int, name: str = "hamustro") -> None:
        self.tracker = tracker
        self.max_buffer = max_buffer
        self.name = name
        self.buffer: deque[Event] = deque()
        self._spool_wake = threading.Event()
        self._send_wake = threading.Event()
        self._spool_lock = threading.Lock()  # one writer of the buffer to disk at a time
        self._cond = threading.Condition()  # guards the flush counters below
        self._flush_requested = 0
        self._flush_done = 0
        self._flush_deadline: float | None = None
        self._stop_spool = False
        self._stopping = False  # the send thread's stop flag
        self._final_deadline: float | None = None
        self._threads: list[threading.Thread] = []
        self._since_wake = 0  # events stored since the send thread was last woken
        self._saw_empty = True  # the send thread last found nothing to send

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._spool_loop, name=f"{self.name}-spool", daemon=True),
            threading.Thread(target=self._send_loop, name=f"{self.name}-send", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # -- called from the application's threads ---------------------------------

    def put(self, event: Event) -> None:
        """Buffer one event for the spool thread (no I/O, never blocks)."""
        if len(self.buffer) >= self.max_buffer:
            self.tracker.stats_counters.drop("buffer_full")
            self.tracker.reporter.problem(
                "buffer",
                f"{self.max_buffer} events wait in memory for the disk; dropping new ones "
                "(is the queue folder writable?)",
            )
            return
        self.buffer.append(event)
        if not self._spool_wake.is_set():
            self._spool_wake.set()

    def store_now(self, event: Event) -> None:
        """Durable mode: write one event on the caller's thread (and wake the sender if due)."""
        self.tracker.store([event])
        self._stored(1)

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

    def flush(self, timeout: float | None) -> bool:
        """Write the buffer to disk, then have the send thread send everything.

        Returns True if nothing is left unsent (in this folder) when it is done.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self.spool()
        with self._cond:
            self._flush_requested += 1
            ticket = self._flush_requested
            self._flush_deadline = deadline
            self._send_wake.set()
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done = self._cond.wait_for(lambda: self._flush_done >= ticket, left)
        try:
            return done and self.tracker.queue.pending_count() == 0
        except Exception:  # the queue is unusable right now; the spool reports why
            return False

    def stop(self, timeout: float) -> bool:
        """Stop both threads; the send thread makes one final attempt within ``timeout``.

        Returns True if both threads ended in time. What is not sent stays on
        disk for the next start.
        """
        deadline = time.monotonic() + timeout
        spool, send = self._threads or (None, None)
        # The spool first, so the final send sees every event emitted before close().
        self._stop_spool = True
        self._spool_wake.set()
        if spool is not None:
            spool.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            self._stopping = True
            self._final_deadline = deadline
        self._send_wake.set()
        if send is not None:
            send.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    # -- the spool thread ------------------------------------------------------

    def spool(self) -> bool:
        """Write everything buffered to disk; False if the queue could not be written."""
        buffer = self.buffer
        with self._spool_lock:
            while buffer:
                # One chunk per write: short transactions leave the database to
                # the send thread between them.
                take = min(len(buffer), self.tracker.max_batch_events)
                items = [buffer.popleft() for _ in range(take)]
                try:
                    self.tracker.store(items)
                except Exception as exc:
                    buffer.extendleft(reversed(items))  # keep them, in order, for the next try
                    self.tracker.reporter.problem(
                        "store", f"cannot write the queue in {self.tracker.queue_dir}: {exc!r}"
                    )
                    return False
                self.tracker.reporter.recovered("store", "the queue is writable again")
                self._stored(len(items))
        return True

    def _spool_loop(self) -> None:
        self.tracker.refresh_ip()  # before the first write: events get the address
        while True:
            self._spool_wake.wait()
            self._spool_wake.clear()
            self.tracker.refresh_ip()  # outside the spool lock: flush() never waits on DNS
            stored = self.spool()
            if self._stop_spool:
                return
            if not stored:
                time.sleep(_STORAGE_RETRY)
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
            try:
                if stopping or ticket > self._flush_done:
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
