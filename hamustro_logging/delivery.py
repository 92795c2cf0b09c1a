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
from collections.abc import Callable
from dataclasses import dataclass

from .queue import Batch, Queue, Settled
from .report import Reporter
from .retry import Backoff, explain
from .stats import Stats
from .transport import Answer, Transport

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
        queue: Callable[[], Queue],
        transport: Transport,
        reporter: Reporter,
        stats: Stats,
        *,
        max_batch_events: int = 500,
        max_batch_bytes: int = 512 * 1024,
        backoff: Backoff | None = None,
    ) -> None:
        self._queue = queue  # the tracker's accessor: reopens a queue whose folder vanished
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
            queue = self._queue()
            if not force and time.monotonic() < self.retry_at:
                return DrainResult(0, True, queue.pending_count())
            # What is pending now, not what the app adds while we send: a pass
            # that chased a busy producer would post a request per new event.
            budget = queue.pending_count()
            while sent < budget and (deadline is None or time.monotonic() < deadline):
                batch = queue.claim(
                    self.owner, self.lease_seconds, self.max_batch_events, self.max_batch_bytes
                )
                if batch is None:
                    break
                answer = self.transport.post(batch.body, deadline=deadline)
                if answer.ok:
                    done = queue.ack(batch)
                elif answer.status == 400:
                    done, answer = self._bisect(queue, batch, deadline)
                else:
                    queue.release(batch, maybe_sent=answer.status is None and answer.sent)
                    done = None
                if done is not None:
                    sent += done.sent
                    self._count(done)
                if answer.ok:
                    self.backoff.reset()
                    self.retry_at = 0.0
                    self.reporter.recovered("send", "the collector accepts events again")
                    continue
                self._failed(batch, answer)
                failed = True
                break
        return DrainResult(sent, failed, queue.pending_count())

    def _bisect(self, queue: Queue, batch: Batch, deadline: float | None) -> tuple[Settled, Answer]:
        """Find the payloads a 400 refers to by sending halves; set those aside.

        The collector refuses a whole collection for one bad payload. Halves
        that get a 200 are delivered; a single payload that gets a 400 is
        moved to the rejected area; any other answer stops the search and
        leaves what is not settled pending. Returns the settlement and the
        answer to act on (a 200 when the search finished).
        """
        frames = batch.frames()
        verdicts: list[bool | None] = [None] * len(frames)
        last = Answer(200)

        def probe(lo: int, hi: int) -> bool:
            nonlocal last
            if hi - lo == len(frames):
                answer = Answer(400)  # the whole batch: already answered
            else:
                queue.renew(batch, self.lease_seconds)
                body = batch.header + b"".join(frame for _, frame in frames[lo:hi])
                answer = self.transport.post(body, deadline=deadline)
            if answer.ok or (answer.status == 400 and hi - lo == 1):
                verdicts[lo:hi] = [answer.ok] * (hi - lo)
                return True
            if answer.status != 400:
                last = answer
                return False
            mid = (lo + hi) // 2
            return probe(lo, mid) and probe(mid, hi)

        probe(0, len(frames))
        if len(frames) > 1 and True not in verdicts:
            # Not one part was accepted: the collection itself is refused (its
            # header, or a proxy in the way), not some events. Keep them all
            # pending and back off rather than set the whole queue aside.
            queue.release(batch)
            return Settled(), Answer(400) if last.ok else last
        done = queue.settle(batch, verdicts)
        if done.rejected:
            refused = [nr for (nr, _), ok in zip(frames, verdicts, strict=True) if ok is False]
            self.reporter.once(
                f"the collector refused {done.rejected} events of session {batch.session} "
                f"(nr {', '.join(map(str, refused[:10]))}{' ...' if len(refused) > 10 else ''}) "
                "with 400; they are kept in the queue's rejected area "
                "(see `hamustro-logging export --rejected` and `retry-rejected`)"
            )
        return done, last

    def _count(self, done: Settled) -> None:
        if done.sent:
            self.stats.add("sent", done.sent)
        if done.resent:
            self.stats.add("resent", done.resent)
        if done.rejected:
            self.stats.add("rejected", done.rejected)

    def _failed(self, batch: Batch, answer: Answer) -> None:
        delay = self.backoff.next_delay(answer)
        self.retry_at = time.monotonic() + delay
        message = explain(answer)
        self.stats.failed(message)
        self.reporter.problem(
            "send",
            f"cannot deliver to {self.transport.shown_url}: {message}",
            f"; {batch.count} events kept on disk, next try in {delay:.0f} s",
        )
