"""Settling: what becomes of a claimed batch once the collector answered (or did not).

A batch is settled payload by payload, in one transaction
(:meth:`Settler.settle`): delivered events are deleted, refused ones move to
the rejected area (``r/``), unknown ones are stored again as pending, with
their attempt kept when the request may have been stored. Only chunks whose
lease still carries the batch's token are touched
(:func:`~hamustro_logging.store.claims.mine`): a chunk another sender took
over after the lease ran out is that sender's now. The ledger changes with
the rows (``sent``, ``rejected/REASON``, ``resent``, ``retried``).

Who calls what: ``Queue.ack``, ``settle``, ``release``, ``renew`` and
``give_back`` are called by whoever sends (``Delivery``, on the handler's
send thread, the agent's, ``ClientTracker.flush``'s or the CLI's);
``Queue.retry_rejected`` by ``hamustro-logging retry-rejected``.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence

from ..owners import token_owner
from ..wire import iter_frames
from .append import Appender
from .claims import mine
from .counts import Books, Counters
from .db import Db, now_ms
from .errors import QueueCorrupt
from .keys import LAST_SYNC, chunk_parts
from .records import Batch, Settled

__all__ = ["Settler"]


def _runs(items: Sequence[tuple[int, bytes]]) -> Iterator[tuple[int, list[bytes]]]:
    """Group (nr, frame) pairs into runs of consecutive numbers."""
    run: list[bytes] = []
    first = expected = 0
    for nr, frame in items:
        if run and nr != expected:
            yield first, run
            run = []
        if not run:
            first = nr
        run.append(frame)
        expected = nr + 1
    if run:
        yield first, run


class Settler:
    """Settles the batches of one ``Queue`` (kept frames are stored by its ``Appender``)."""

    def __init__(self, db: Db, counters: Counters, books: Books, appender: Appender) -> None:
        self._db = db
        self._counters = counters
        self._books = books
        self._appender = appender

    def settle(
        self,
        batch: Batch,
        verdicts: Sequence[bool | str | None],
        kept_maybe_sent: bool | Sequence[bool] = False,
    ) -> Settled:
        """Apply a verdict per payload of ``batch`` (in order), in one transaction.

        True: delivered, deleted. A str (the reason: ``"400"``, ``"413"``;
        False means ``"400"``): refused by the collector, moved to the
        rejected area (kept on disk, see ``retry_rejected``). None: not
        known, stored again as pending; ``kept_maybe_sent`` (for all, or per
        payload) says the last request that carried it may have been stored
        (``retry.possibly_stored``): its attempt stays, so its next send
        counts as a resend. Chunks whose lease is no longer ours are left
        alone. The ledger changes with the rows.
        """
        db = self._db
        sent = resent = rejected = freed = 0
        total = len(verdicts)
        maybe = [kept_maybe_sent] * total if isinstance(kept_maybe_sent, bool) else kept_maybe_sent
        if not total == len(maybe) == batch.count:
            raise ValueError(
                f"{total} verdicts and {len(maybe)} kept_maybe_sent for {batch.count} payloads"
            )
        counts: collections.Counter[str] = collections.Counter()
        with db.transaction():
            cache = db.cache  # read under the gate: a salvage may have replaced it
            index = 0
            for key, data in batch.chunks():
                session, hid, first, n = chunk_parts(key)
                chunk_verdicts = verdicts[index : index + n]
                chunk_maybe = maybe[index : index + n]
                index += n
                if not mine(db, key, batch.token, batch.leased):
                    continue
                if batch.leased:
                    attempts = db.int_row("m/" + key) or 1
                else:  # claimed in memory: this send's attempt was not written
                    attempts = (db.int_row("m/" + key) or 0) + 1
                # A possible duplicate: a leased claim counted it in `resent`
                # (taken back if not stored), an unleased one counts it here.
                earlier = attempts > 1
                for key_ in (key, "l/" + key, "m/" + key):
                    cache.delete(key_)
                if chunk_verdicts.count(True) == n:  # (a verdict is a bool, a str or None)
                    # The common case, the whole chunk delivered: no payload looked at.
                    sent += n
                    freed += len(data)
                    if earlier:
                        resent += n
                        if not batch.leased:
                            counts["resent"] += n
                    continue
                keep: list[tuple[int, bytes]] = []
                keep_maybe: list[tuple[int, bytes]] = []
                numbered = zip(range(first, first + n), iter_frames(data), strict=True)
                for (nr, frame), verdict, maybe_sent in zip(
                    numbered, chunk_verdicts, chunk_maybe, strict=True
                ):
                    stored = verdict is True or (verdict is None and maybe_sent)
                    if earlier:
                        resent += stored
                        if batch.leased:
                            counts["resent"] -= not stored  # not stored: no duplicate after all
                        else:
                            counts["resent"] += stored
                    if verdict is None:
                        (keep_maybe if maybe_sent else keep).append((nr, frame))
                        continue
                    freed += len(frame)
                    if verdict is True:
                        sent += 1
                    else:
                        rejected += 1
                        counts["rejected/" + ("400" if verdict is False else verdict)] += 1
                        cache.set(f"r/{session}/{hid}/{nr:010d}/1", frame)
                for runs, kept_attempts in ((keep, attempts - 1), (keep_maybe, attempts)):
                    for run_first, run in _runs(runs):
                        self._appender.put_chunks(session, hid, run_first, run, kept_attempts)
            if sent + rejected:
                self._counters.bump(pending=-(sent + rejected), size=-freed, rejected=rejected)
            if sent:
                cache.set(LAST_SYNC, now_ms())
            counts["sent"] = sent
            booked = counts.pop("resent", 0)
            self._books.unbook_resent(-booked)
            counts["resent"] = max(booked, 0)
            self._books.book(counts)
        return Settled(sent, resent, rejected)

    def release(self, batch: Batch, maybe_sent: bool = False) -> Settled:
        """Give a batch back unsent (any answer but 200): drop our leases.

        ``maybe_sent``: the collector may have stored it (no answer after the
        whole body went out, or a gateway's 5xx: ``retry.possibly_stored``);
        the attempt the claim counted stays, and so does the ``resent`` it
        counted for a chunk sent before. Otherwise both are taken back.
        Returns the possible duplicates this send made (``Settled.resent``).
        A batch claimed without leases has nothing to give back (its claim
        wrote no lease, attempt or ``resent``).
        """
        if not batch.leased:
            return Settled()
        db = self._db
        resent = 0
        with db.transaction():
            cache = db.cache  # read under the gate: a salvage may have replaced it
            for key in batch.keys:
                if not mine(db, key, batch.token):
                    continue
                cache.delete("l/" + key)
                attempts = db.int_row("m/" + key) or 1
                n = chunk_parts(key)[3]
                if maybe_sent:
                    resent += n if attempts > 1 else 0
                    continue
                if attempts > 1:
                    cache.set("m/" + key, attempts - 1)
                    self._books.unbook_resent(n)
                else:
                    cache.delete("m/" + key)
        return Settled(resent=resent)

    def renew(self, batch: Batch, lease_seconds: float) -> None:
        """Extend our leases on ``batch`` (a long bisection needs more time)."""
        if not batch.leased:
            return
        db = self._db
        expiry = now_ms() + int(lease_seconds * 1000)
        with db.transaction():
            cache = db.cache  # read under the gate: a salvage may have replaced it
            for key in batch.keys:
                if mine(db, key, batch.token):
                    cache.set("l/" + key, f"{batch.token}|{expiry}")

    def give_back(self, owner: str) -> int:
        """Drop every lease ``owner`` holds (it stops with a request in flight); return how many.

        The attempts stay counted: those requests may still reach the collector.
        """
        db = self._db
        freed = 0
        with db.transaction():
            cache = db.cache  # read under the gate: a salvage may have replaced it
            for key in list(db.keys_with("l/")):
                try:
                    value = cache.get(key)
                except QueueCorrupt:
                    value = None
                if isinstance(value, str) and token_owner(value.rpartition("|")[0]) == owner:
                    cache.delete(key)
                    freed += 1
        return freed

    def retry_rejected(self) -> int:
        """Move every rejected event back to pending; return how many moved."""
        db = self._db
        moved = freed = 0
        with db.transaction():
            cache = db.cache  # read under the gate: a salvage may have replaced it
            for key in list(db.keys_with("r/")):
                value = cache.get(key)
                cache.delete(key)
                if isinstance(value, bytes):
                    cache.set("e/" + key[2:], value)
                    moved += 1
                    freed += len(value)
            if moved:
                self._counters.bump(pending=moved, size=freed, rejected=-moved)
                self._books.book({"retried": moved})
        return moved
