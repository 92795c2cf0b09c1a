"""One pass over the queue: claim a batch, POST it, delete it on 200 or give it back.

Used by ``ClientTracker.flush`` and by the handler's flusher thread; a lock
makes it one pass at a time per ``Delivery`` (its ``Transport`` is not shared
between threads). Other processes on the same folder are kept apart by the
queue's leases.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from dataclasses import dataclass

from .queue import Queue
from .report import Reporter
from .retry import Backoff, explain
from .stats import Stats
from .transport import Transport

__all__ = ["Delivery", "DrainResult"]


@dataclass(frozen=True)
class DrainResult:
    sent: int
    failed: bool
    left: int


def new_owner() -> str:
    """A lease owner id unique to this process (and to this object in it)."""
    return f"{socket.gethostname()}:{uuid.uuid4().hex[:12]}"


class Delivery:
    """Sends what the queue holds, batch by batch, obeying the backoff."""

    def __init__(
        self,
        queue: Queue,
        transport: Transport,
        reporter: Reporter,
        stats: Stats,
        *,
        max_batch_events: int = 500,
        max_batch_bytes: int = 512 * 1024,
        backoff: Backoff | None = None,
    ) -> None:
        self.queue = queue
        self.transport = transport
        self.reporter = reporter
        self.stats = stats
        self.max_batch_events = max_batch_events
        self.max_batch_bytes = max_batch_bytes
        self.backoff = backoff if backoff is not None else Backoff()
        self.owner = new_owner()
        connect, read = transport.timeout
        # A lease outlives any request of ours (connect + read, twice, plus a
        # margin), so a live sender never loses its batch to another; a dead
        # one's batches come back after that long.
        self.lease_seconds = 2 * (connect + read) + 10
        self.retry_at = 0.0  # time.monotonic() before which we do not try again
        self._lock = threading.Lock()

    def drain(self, deadline: float | None = None, force: bool = False) -> DrainResult:
        """Send batches until the queue is empty, a send fails, or ``deadline`` passes.

        ``deadline`` is a ``time.monotonic()`` value; ``force`` ignores the
        backoff (an explicit flush). Returns what was sent and what is left.
        """
        sent = 0
        failed = False
        with self._lock:
            if force or time.monotonic() >= self.retry_at:
                while deadline is None or time.monotonic() < deadline:
                    batch = self.queue.claim(
                        self.owner, self.lease_seconds, self.max_batch_events, self.max_batch_bytes
                    )
                    if batch is None:
                        break
                    answer = self.transport.post(batch.body, deadline=deadline)
                    if answer.ok:
                        sent += self.queue.ack(batch)
                        self.backoff.reset()
                        self.retry_at = 0.0
                        self.reporter.recovered("send", "the collector accepts events again")
                        continue
                    self.queue.release(batch)
                    delay = self.backoff.next_delay(answer)
                    self.retry_at = time.monotonic() + delay
                    message = explain(answer)
                    self.stats.failed(message)
                    self.reporter.problem(
                        "send",
                        f"could not deliver {batch.count} events to {self.transport.url}: "
                        f"{message}; kept on disk, next try in {delay:.0f} s",
                    )
                    failed = True
                    break
            else:
                failed = True
        if sent:
            self.stats.add("sent", sent)
        return DrainResult(sent, failed, self.queue.pending_count())
