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

A full disk (filled by another file: the queue's own floor keeps room for
its deletes) stops no delivery, and nothing raises out of a pass:

* a claim that cannot write its leases claims in memory instead, under the
  folder's send lock (:mod:`hamustro_logging.sendlock`: no other process
  sends meanwhile), and sends;
* a delete (or a move to the rejected area) that cannot be written is owed:
  the batch is remembered in memory, its chunks are not claimed again by
  this sender, and the delete is tried again before every claim. The events
  are counted in ``stats()`` once the delete lands. If the process ends
  first, they stay in the queue and are sent again by the next run (a
  duplicate, counted in ``resent`` when the claim could write its attempt);
* one line says it, and what to do: free space on that disk.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .mapping import describe
from .queue import Batch, Queue, Settled, disk_full, new_owner
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
    """What a pass did: events delivered (and deleted), whether a send or a store failed,
    and the events left to send (those whose delete is owed are sent; -1: unknown,
    the queue could not be read)."""

    sent: int
    failed: bool
    left: int


@dataclass(frozen=True)
class _Owed:
    """A batch sent (or split) whose settling could not be written: a full disk."""

    batch: Batch
    verdicts: tuple[bool | str | None, ...]
    kept_maybe_sent: bool | tuple[bool, ...]


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
        #: Settlings a full disk refused, in the order they were due (see the module's doc).
        self._owed: list[_Owed] = []
        #: Claims go in memory (the last claim could not write its leases).
        self._unleased = False
        self._lock = threading.Lock()

    def drain(self, deadline: float | None = None, force: bool = False) -> DrainResult:
        """Send batches until the queue is empty, a send fails, or ``deadline`` passes.

        ``deadline`` is a ``time.monotonic()`` value; ``force`` ignores the
        backoff (an explicit flush). Returns what was sent and what is left.
        Never raises: a queue that cannot be read or written (a full disk, a
        lock held too long, a folder gone) ends the pass, said on stderr.
        """
        with self._lock:
            sent = 0
            failed = False
            queue: Queue | None = None
            try:
                queue = self._queue()
                sent, failed = self._pass(queue, deadline, force)
            except Exception as exc:
                failed = True
                self._storage_failed(exc)
            return DrainResult(sent, failed, self._left(queue))

    def _pass(self, queue: Queue, deadline: float | None, force: bool) -> tuple[int, bool]:
        """The pass itself, under the lock: (events delivered, whether it failed)."""
        sent = self._settle_owed(queue)
        now = time.monotonic()
        if not force and now < self.retry_at:
            return sent, True
        # What is pending now, not what the app adds while we send: a pass
        # that chased a busy producer would post a request per new event.
        budget = queue.pending_count() - self._owed_events()
        # Sessions held back after their collection was refused (an
        # explicit flush tries each once more).
        held = {s for s, (_, until) in self._held.items() if until > now and not force}
        failed = False
        while budget > 0 and (deadline is None or time.monotonic() < deadline):
            batch = self._claim(queue, held)
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
                return sent, True
        return sent, failed

    def _left(self, queue: Queue | None) -> int:
        """Events left to send: pending in the queue, less those sent whose delete is owed."""
        try:
            if queue is None:
                return -1
            return max(0, queue.pending_count() - self._owed_events())
        except Exception:
            return -1

    # -- a full disk: claims in memory, deletes owed ------------------------------------

    def _claim(self, queue: Queue, held: set[str]) -> Batch | None:
        """The next batch: leased, or claimed in memory while the disk refuses leases."""
        exclude = {key for owed in self._owed for key in owed.batch.keys}
        if not self._unleased:
            try:
                return queue.claim(
                    self.owner, self.lease_seconds, self.max_batch_events,
                    self.max_batch_bytes, destination=self.destination, skip=held,
                    exclude=exclude,
                )  # fmt: skip
            except Exception as exc:
                if not disk_full(exc):
                    raise
                self._disk_full(queue, exc)
                if not queue.hold_sending():
                    return None  # another process sends without leases: it goes on alone
                self._unleased = True
        return queue.claim(
            self.owner, self.lease_seconds, self.max_batch_events, self.max_batch_bytes,
            destination=self.destination, skip=held, exclude=exclude, lease=False,
        )  # fmt: skip

    def _settle(
        self,
        queue: Queue,
        batch: Batch,
        verdicts: Sequence[bool | str | None],
        kept_maybe_sent: bool | Sequence[bool] = False,
    ) -> Settled:
        """``queue.settle``; on a full disk the settling is owed (counted when it lands)."""
        try:
            return queue.settle(batch, verdicts, kept_maybe_sent)
        except Exception as exc:
            if not disk_full(exc):
                raise
            maybe = kept_maybe_sent if isinstance(kept_maybe_sent, bool) else tuple(kept_maybe_sent)
            self._owed.append(_Owed(batch, tuple(verdicts), maybe))
            self._disk_full(queue, exc)
            return Settled()

    def _settle_owed(self, queue: Queue) -> int:
        """Write the settlings a full disk refused, oldest first; events delivered by them."""
        sent = 0
        while self._owed:
            owed = self._owed[0]
            try:
                done = queue.settle(owed.batch, owed.verdicts, owed.kept_maybe_sent)
            except Exception as exc:
                if not disk_full(exc):
                    raise
                return sent
            self._owed.pop(0)
            self._count(done)
            sent += done.sent
        if self._unleased:
            self._unleased = False
            queue.let_go_sending()
        self.reporter.recovered("disk", "the queue's disk has room again; owed deletes are done")
        return sent

    def _owed_events(self) -> int:
        # A refusal (False, or its reason) is not counted, as before reasons existed.
        return sum(
            v is not False and not isinstance(v, str) for owed in self._owed for v in owed.verdicts
        )

    def _disk_full(self, queue: Queue, exc: BaseException) -> None:
        self.reporter.problem(
            "disk",
            f"the disk of the queue in {queue.directory} is full ({describe(exc)}): events are "
            "still sent, but what was delivered cannot be deleted from the queue until there "
            "is room; free some space on that disk (something other than the queue filled "
            "it: the queue stops storing at min_free_bytes)",
            f"; {self._owed_events()} delivered events wait in memory to be deleted",
        )

    def _storage_failed(self, exc: BaseException) -> None:
        """A pass ended because the queue could not be read or written: say it, never raise."""
        message = f"the queue could not be used: {describe(exc)}"
        self.reporter.problem("queue", f"sending stopped: {message}", "; the events stay on disk")

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
            return self._settle(queue, batch, [True] * batch.count), answer
        if action is Action.SPLIT:
            return self._split(queue, batch, answer, deadline)
        return self._release(queue, batch, maybe_sent=possibly_stored(answer)), answer

    def _release(self, queue: Queue, batch: Batch, maybe_sent: bool = False) -> Settled:
        """``queue.release``; on a full disk the leases are left to expire (nothing was sent)."""
        try:
            return queue.release(batch, maybe_sent=maybe_sent)
        except Exception as exc:
            if not disk_full(exc):
                raise
            self._disk_full(queue, exc)
            return Settled()

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
                try:
                    queue.renew(batch, self.lease_seconds)
                except Exception as exc:  # a full disk: the lease we have must do
                    if not disk_full(exc):
                        raise
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
            self._release(queue, batch)
            return Settled(), Answer(400)
        done = self._settle(queue, batch, verdicts, maybe_stored)
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
