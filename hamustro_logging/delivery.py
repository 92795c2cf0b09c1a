"""One pass over the queue: claim a batch, POST it, then settle it as ``retry.decide`` says.

Used by ``ClientTracker.flush`` and by the handler's flusher thread; a lock
makes it one pass at a time per ``Delivery`` (its ``Transport`` is not shared
between threads). Other processes on the same folder are kept apart by the
queue's leases, which outlast any request (``Transport.max_duration``).

What a pass does with each answer (the rules themselves are in ``retry.py``):

* delivered: the batch is deleted;
* split (400, 413): halves are sent until every payload is settled; one
  payload refused alone goes to the rejected area. A 413 also lowers the
  request size for what follows. When no part at all is accepted with 400,
  the collection itself is refused (its header): that session is held back
  with a backoff of its own while the other sessions go on;
* retry: the batch is given back and the whole delivery backs off (the
  collector, the network or the configuration is at fault, not one batch).

Whether a batch given back may have been stored anyway (its next send then
counts in ``resent``) is ``retry.possibly_stored``, for every answer alike.
The queue counts each outcome in the folder's ledger as it settles it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .queue import Batch, Queue, Settled, new_owner
from .report import Reporter
from .retry import Action, Backoff, decide, explain, possibly_stored
from .stats import Stats
from .transport import Answer, Transport

__all__ = ["Delivery", "DrainResult"]

#: The smallest request size a 413 can teach us: below this a proxy is broken,
#: and single events are refused on their own instead.
_MIN_BATCH_BYTES = 4096
#: Lease margin beyond the longest request: the database work around it.
_LEASE_MARGIN = 30.0


@dataclass(frozen=True)
class DrainResult:
    sent: int
    failed: bool
    left: int


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
        max_batch_bytes: int = 64 * 1024,
        backoff: Backoff | None = None,
        destination: str | frozenset[str] | None = None,
    ) -> None:
        self._queue = queue  # the tracker's accessor: reopens a queue whose folder vanished
        self.transport = transport
        self.reporter = reporter
        self.stats = stats
        self.max_batch_events = max_batch_events
        self.max_batch_bytes = max_batch_bytes
        self.backoff = backoff if backoff is not None else Backoff()
        self.destination = destination
        self.owner = new_owner()
        # No request of ours outlives its lease: the transport ends every one
        # within max_duration, so a live sender never loses its batch to
        # another, and a dead one's batches come back after that long (at
        # once when it was a process of this host).
        self.lease_seconds = transport.max_duration + _LEASE_MARGIN
        self.retry_at = 0.0  # time.monotonic() before which we do not try again
        #: A one-shot sender (the CLI's flush) does not try again by itself:
        #: its messages do not promise a next try.
        self.one_shot = False
        self._held: dict[str, tuple[Backoff, float]] = {}  # session -> backoff, held until
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
            now = time.monotonic()
            if not force and now < self.retry_at:
                return DrainResult(0, True, queue.pending_count())
            # What is pending now, not what the app adds while we send: a pass
            # that chased a busy producer would post a request per new event.
            budget = queue.pending_count()
            # Sessions held back after their collection was refused (an
            # explicit flush tries each once more).
            held = {s for s, (_, until) in self._held.items() if until > now and not force}
            while budget > 0 and (deadline is None or time.monotonic() < deadline):
                batch = queue.claim(
                    self.owner,
                    self.lease_seconds,
                    self.max_batch_events,
                    self.max_batch_bytes,
                    destination=self.destination,
                    skip=held,
                )
                if batch is None:
                    break
                budget -= batch.count
                done, answer = self._send(queue, batch, deadline)
                sent += done.sent
                self._count(done)
                if answer.ok:
                    self.backoff.reset()
                    self.retry_at = 0.0
                    if self._held.pop(batch.session, None) is not None:
                        self.reporter.recovered(
                            f"session {batch.session}", "the collector accepts that session again"
                        )
                    self.reporter.recovered("send", "the collector accepts events again")
                elif answer.status == 400:  # the collection itself refused: hold that session
                    failed = True
                    held.add(batch.session)
                    self._hold(batch, answer)
                else:
                    self._failed(batch, answer)
                    failed = True
                    break
        return DrainResult(sent, failed, queue.pending_count())

    def give_back(self) -> int:
        """Release every lease this sender holds (it stops with a request in flight)."""
        return self._queue().give_back(self.owner)

    def _send(self, queue: Queue, batch: Batch, deadline: float | None) -> tuple[Settled, Answer]:
        """POST one batch and settle it; the answer to act on (200 when all is settled)."""
        if batch.count > 1 and len(batch.body) > self.max_batch_bytes:
            # Stored before a 413 taught us the size: split it without asking.
            return self._split(queue, batch, None, deadline)
        answer = self.transport.post(batch.body, deadline=deadline)
        action = decide(answer)
        if action is Action.DELIVERED:
            return queue.ack(batch), answer
        if action is Action.SPLIT:
            return self._split(queue, batch, answer, deadline)
        return queue.release(batch, maybe_sent=possibly_stored(answer)), answer

    def _split(
        self, queue: Queue, batch: Batch, first: Answer | None, deadline: float | None
    ) -> tuple[Settled, Answer]:
        """Send halves until each payload is delivered or refused alone; settle what is known.

        Halves that get a 200 are delivered; a single payload refused (400,
        413) goes to the rejected area; any other answer stops the search
        and leaves what is not settled pending. A 413 lowers
        ``max_batch_bytes`` to below the refused size for every later request.
        """
        frames = batch.frames()
        verdicts: list[bool | str | None] = [None] * len(frames)
        maybe_stored = [False] * len(frames)  # by the request that ended the search
        stop: Answer | None = None

        #: The first refusal of the batch (what the rejected-area line names).
        refusal = first

        def probe(lo: int, hi: int, answer: Answer | None) -> bool:
            nonlocal stop, refusal
            size = len(batch.header) + sum(len(frame) for _, frame in frames[lo:hi])
            if answer is None:
                if hi - lo > 1 and size > self.max_batch_bytes:
                    return halves(lo, hi)  # known too large: no need to ask
                queue.renew(batch, self.lease_seconds)
                body = batch.header + b"".join(frame for _, frame in frames[lo:hi])
                answer = self.transport.post(body, deadline=deadline)
            action = decide(answer)
            if action is Action.DELIVERED:
                verdicts[lo:hi] = [True] * (hi - lo)
                return True
            if action is not Action.SPLIT:
                stop = answer
                maybe_stored[lo:hi] = [possibly_stored(answer)] * (hi - lo)
                return False
            refusal = refusal or answer
            if answer.status == 413:  # a real answer: the collector (or a proxy) said so
                self._shrink(size)
            if hi - lo == 1:
                verdicts[lo] = str(answer.status)  # the reason it is rejected for
                return True
            return halves(lo, hi)

        def halves(lo: int, hi: int) -> bool:
            mid = (lo + hi) // 2
            return probe(lo, mid, None) and probe(mid, hi, None)

        probe(0, len(frames), first)
        status = refusal.status if refusal is not None else 413
        if status == 400 and len(frames) > 1 and True not in verdicts and stop is None:
            # Not one part was accepted: the collection itself is refused (its
            # header), not some events. Keep them all pending.
            queue.release(batch)
            return Settled(), Answer(400)
        done = queue.settle(batch, verdicts, kept_maybe_sent=maybe_stored)
        if done.rejected:
            refused = [
                nr for (nr, _), v in zip(frames, verdicts, strict=True) if isinstance(v, str)
            ]
            self.reporter.once(
                f"the collector refused {done.rejected} events of session {batch.session} "
                f"(nr {', '.join(map(str, refused[:10]))}{' ...' if len(refused) > 10 else ''}) "
                f"with {status}; they are kept in the queue's rejected area "
                "(see `hamustro-logging export --rejected` and `retry-rejected`)"
            )
        return done, stop if stop is not None else Answer(200)

    def _shrink(self, refused_size: int) -> None:
        """A 413 for ``refused_size`` bytes: send less than that from now on."""
        smaller = max(_MIN_BATCH_BYTES, refused_size // 2)
        if smaller < self.max_batch_bytes:
            self.max_batch_bytes = smaller
            self.reporter.once(
                f"the collector (or a proxy before it) refused a {refused_size}-byte request "
                f"with 413; requests are now at most {smaller} bytes (set max_batch_bytes lower "
                "to start there)"
            )

    def _count(self, done: Settled) -> None:
        if done.sent:
            self.stats.add("sent", done.sent)
        if done.resent:
            self.stats.add("resent", done.resent)
        if done.rejected:
            self.stats.add("rejected", done.rejected)

    def _hold(self, batch: Batch, answer: Answer) -> None:
        """Hold one session back after its collection was refused; the others go on."""
        backoff = self._held[batch.session][0] if batch.session in self._held else None
        if backoff is None:
            backoff = Backoff(self.backoff.base, self.backoff.cap)
        delay = backoff.next_delay(answer)
        self._held[batch.session] = (backoff, time.monotonic() + delay)
        self.stats.failed(explain(answer))
        self.reporter.problem(
            f"session {batch.session}",
            f"the collector refuses every event of session {batch.session} with "
            f"{answer.status} (its collection header); the other sessions go on",
            self._kept(batch, delay),
        )

    def _kept(self, batch: Batch, delay: float) -> str:
        if self.one_shot:
            return f"; {batch.count} events kept on disk"
        return f"; {batch.count} events kept on disk, next try in {delay:.0f} s"

    def _failed(self, batch: Batch, answer: Answer) -> None:
        delay = self.backoff.next_delay(answer)
        self.retry_at = time.monotonic() + delay
        message = explain(answer)
        self.stats.failed(message)
        self.reporter.problem(
            "send",
            f"cannot deliver to {self.transport.shown_url}: {message}",
            self._kept(batch, delay),
        )
