"""A handler's send thread: it delivers what is in the store when a send is due.

Who calls what: :meth:`SendThread.stored` is called by the spool thread after
it moved events into the store; :meth:`SendThread.flush` by ``flush()`` on the
application's thread; :meth:`SendThread.stop` by ``close()``;
:meth:`SendThread.forget_after_fork` in a forked child. The thread itself
runs ``Delivery.drain`` (:mod:`hamustro_logging.delivery`: batches, the
retry rules, counters).

It wakes when the spool stored events (at most once per ``queue_size``
events, or when it last saw the store empty), on ``flush()``, on the spec's
retention timer and when a backoff ends, and sends while a trigger holds
(``ClientTracker.is_due``). It never logs through ``logging`` nor takes a
logging lock, so ``flush()`` and ``close()`` may wait for it while
``logging.shutdown()`` holds the handler's lock; every such wait has a
deadline.
"""

from __future__ import annotations

import threading
import time

from .tracker import ClientTracker

__all__ = ["SendThread", "seconds_left"]

#: How long the thread sleeps at most between looks at the store: other
#: processes sharing the folder add events it is not told about.
_MAX_IDLE = 30.0
#: Look again this soon when events are due but were not all sent (other
#: processes hold leases on them).
_BUSY_POLL = 0.5
#: Pause after the store could not be read, before looking again.
_STORAGE_RETRY = 1.0
#: Of stop()'s time, what is kept to give back the leases of a request in flight.
_GIVE_BACK_TIME = 0.25


def seconds_left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (monotonic), never negative; None for no deadline."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class SendThread:
    """The send thread of one handler, and the tickets ``flush()`` and ``stop()`` wait on."""

    def __init__(self, tracker: ClientTracker, name: str) -> None:
        self.tracker = tracker
        self.name = name
        self.thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._cond = threading.Condition()  # guards the tickets below
        self._flush_requested = 0
        self._flush_done = 0
        self._flush_deadline: float | None = None
        self._stopping = False
        self._final_send = True
        self._final_deadline: float | None = None
        self._since_wake = 0
        self._saw_empty = True

    def start(self) -> None:
        self.thread = threading.Thread(target=self._loop, name=f"{self.name}-send", daemon=True)
        self.thread.start()

    def stored(self, count: int) -> None:
        """``count`` events were moved into the store: wake the thread if a send may be due.

        Not after every move: each wake costs the thread a look at the
        database. It is woken when the events stored since its last wake
        reach ``queue_size``, or when it last saw an empty store (so it
        starts the retention timer).
        """
        self._since_wake += count
        if self._since_wake >= self.tracker.queue_size or self._saw_empty:
            self._since_wake = 0
            self._saw_empty = False
            self._wake.set()

    def flush(self, deadline: float | None) -> bool:
        """Have everything in the store sent now; True if the thread did so by ``deadline``."""
        with self._cond:
            self._flush_requested += 1
            ticket = self._flush_requested
            self._flush_deadline = deadline
            self._wake.set()
            return self._cond.wait_for(lambda: self._flush_done >= ticket, seconds_left(deadline))

    def stop(self, deadline: float, final_send: bool = True) -> bool:
        """One final attempt (if ``final_send``), then the thread ends; True if it did in time.

        Never waits past ``deadline``: a thread still in a request then
        gives its leases back at once (the batch is sent again later).
        """
        with self._cond:
            self._stopping = True
            self._final_send = final_send
            self._final_deadline = deadline
        self._wake.set()
        thread = self.thread
        if thread is None:
            return True
        thread.join(max(0.0, deadline - _GIVE_BACK_TIME - time.monotonic()))
        if thread.is_alive():
            self._give_back(deadline)
        return not thread.is_alive()

    def forget_after_fork(self) -> None:
        """In a forked child: no thread, and new locks (a parent thread may have held them)."""
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self.thread = None

    def _give_back(self, deadline: float) -> None:
        """The thread is still in a request: release its leases, within ``deadline``."""
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

    def _idle_time(self) -> float:
        """Seconds until the next reason to look at the store."""
        tracker = self.tracker
        if tracker.queue.pending_count() == 0:
            self._saw_empty = True
            wait = _MAX_IDLE
        elif tracker.is_due():  # due but not sent: a backoff runs, or others hold leases
            wait = max(tracker.delivery.retry_at - time.monotonic(), _BUSY_POLL)
        else:
            wait = tracker.queue.last_sync() + tracker.queue_retention * 60 - time.time()
        return min(max(wait, 0.01), _MAX_IDLE)

    def _loop(self) -> None:
        tracker = self.tracker
        while True:
            try:
                self._wake.wait(self._idle_time())
            except Exception:  # the store may be unreadable for a moment; the spool reports it
                self._wake.wait(_STORAGE_RETRY)
            self._wake.clear()
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
