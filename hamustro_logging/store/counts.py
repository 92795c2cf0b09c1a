"""What the store counts: the counters of what it holds now, and the ledger of where events went.

Both are rows of the database (``s/`` in :mod:`~hamustro_logging.store.keys`),
changed in the same transaction as the rows they count, so every process on
the folder (and the CLI) reads the same numbers.

* :class:`Counters`: unsent events and their bytes, rejected events, rows set
  aside, the last sync. Quick to read (``stats()``, ``status``, the send
  triggers); a counter that cannot be read (tampering) is rebuilt from the
  rows.
* :class:`Books`: the folder's ledger (the names and the sum:
  :mod:`hamustro_logging.ledger`). It cannot be rebuilt: a tampered count
  starts again from the next change.

Who calls what: the other parts of the store, inside the transaction of the
change they count (append, settle, damage, salvage...), on the thread that
called the ``Queue``; ``Queue.pending_count`` and the other counts, and
``Queue.add_to_ledger`` (the handler's own drops, from its spool thread),
from any thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from ..ledger import Ledger, ledger_key
from .db import Db, now_ms
from .errors import QueueCorrupt
from .keys import (
    ASIDE,
    LAST_SYNC,
    LEDGER_PREFIX,
    PENDING,
    PENDING_BYTES,
    REJECTED,
    SINCE,
    after,
    parse_chunk_key,
)

__all__ = ["Books", "Counters"]


class Counters:
    """The ``s/`` counters of one folder: what it holds now."""

    def __init__(self, db: Db) -> None:
        self._db = db

    def get(self, key: str) -> int:
        """A counter (``keys.PENDING``...), rebuilt from the rows if it cannot be read."""
        value = self._db.int_row(key)
        if value is None:
            with self._db.transaction():
                self.rebuild()
            value = self._db.int_row(key)
        return value or 0

    def last_sync(self) -> float:
        """Epoch seconds of the last 200 (or of the queue's creation)."""
        value = self._db.int_row(LAST_SYNC)
        if value is None:
            with self._db.transaction():
                self.rebuild()
            value = self._db.int_row(LAST_SYNC)
        return (value or 0) / 1000

    def bump(self, pending: int = 0, size: int = 0, rejected: int = 0, aside: int = 0) -> None:
        """Add to the counters (inside a transaction, after the rows changed)."""
        try:
            for key, delta in (
                (PENDING, pending),
                (PENDING_BYTES, size),
                (REJECTED, rejected),
                (ASIDE, aside),
            ):
                if delta:
                    self._db.cache.incr(key, delta)
        except (QueueCorrupt, TypeError):
            self.rebuild()

    def rebuild(self) -> None:
        """Count again what the rows hold (inside a transaction): a counter was unreadable."""
        db = self._db
        pending = size = rejected = aside = 0
        rows = db.sql(
            "SELECT key, length(value) FROM Cache WHERE key > 'e/' AND key < 'e0' AND raw = 1"
        )
        for key, length in rows:
            parsed = parse_chunk_key(key)
            if parsed is not None:
                pending += parsed[3]
                size += length or 0
        rejected = sum(1 for _ in db.keys_with("r/"))
        aside = sum(1 for _ in db.keys_with("x/"))
        for key, value in (
            (PENDING, pending),
            (PENDING_BYTES, size),
            (REJECTED, rejected),
            (ASIDE, aside),
        ):
            db.cache.set(key, value)
        if db.int_row(LAST_SYNC) is None:
            db.cache.set(LAST_SYNC, now_ms())
        db.notify(f"rebuilt the counters of the queue in {db.directory} from its rows")


class Books:
    """The folder's ledger rows (``s/ledger/``): added to with the rows they count."""

    def __init__(self, db: Db) -> None:
        self._db = db

    def begin(self) -> None:
        """The rows a database starts with (in the transaction that opens it).

        A brand-new queue counts retention from its creation, so it does not
        send on every event before its first sync.
        """
        cache = self._db.cache
        cache.add(LAST_SYNC, now_ms())
        if cache.add(SINCE, now_ms()):
            # The ledger begins (a new folder, or one of a version without
            # it): what is pending now is what it was stored with.
            self.reconcile()

    def book(self, counts: Mapping[str, int]) -> None:
        """Add to the ledger (inside a transaction, with the rows the counts are about)."""
        for name, delta in counts.items():
            if not delta:
                continue
            key = ledger_key(name)
            try:
                self._db.cache.incr(key, delta, default=0)
            except (QueueCorrupt, TypeError):  # a tampered row: counting starts again from here
                self._db.cache.set(key, max(delta, 0))

    def add(self, counts: Mapping[str, int]) -> None:
        """Add ``counts`` in a transaction of their own, or the caller's (see ``Queue``)."""
        for name, delta in counts.items():
            ledger_key(name)
            if delta < 0:
                raise ValueError(f"a ledger count only grows: {name} {delta}")
        with self._db.transaction():
            self.book(counts)

    def unbook_resent(self, n: int) -> None:
        """Take back ``n`` of the ``resent`` a claim counted (the answer said: not stored)."""
        if n > 0:
            try:
                self._db.cache.incr(ledger_key("resent"), -n, default=n)
            except (QueueCorrupt, TypeError):
                self._db.cache.set(ledger_key("resent"), 0)

    def carry(self, key: str, value: object) -> None:
        """Add a ledger row of a set-aside database to this one's (in a transaction).

        Its counts are added to what the new database counted meanwhile (a
        slice reads each row once); ``since`` becomes the older of the two.
        """
        if type(value) is not int:
            return
        cache = self._db.cache
        if key == SINCE:
            now = self._db.int_row(SINCE)
            cache.set(SINCE, value if now is None else min(now, value))
            return
        try:
            cache.incr(key, value, default=0)
        except (QueueCorrupt, TypeError):
            cache.set(key, value)

    def ledger(self) -> Ledger:
        """The folder's lifetime counts (every process's; see ``ledger.py``)."""
        return Ledger.from_rows(self._rows())

    def _rows(self) -> dict[str, object]:
        rows = self._db.sql(
            "SELECT key FROM Cache WHERE key > ? AND key < ? AND raw = 1",
            (LEDGER_PREFIX, after(LEDGER_PREFIX)),
        )
        out: dict[str, object] = {}
        for (key,) in rows:
            with contextlib.suppress(QueueCorrupt):
                out[key] = self._db.cache.get(key)
        return out

    def reconcile(self) -> None:
        """Make the store side of the ledger add up again (inside a transaction).

        Called when counting begins in a folder that already holds events, and
        after a corrupt database was set aside: events the ledger says were
        stored but no row holds any more were left in the database set aside
        (``set_aside``); rows the ledger does not know (it began after them,
        or its rows could not be read) count as ``stored``.
        """
        ledger = self.ledger()
        missing = ledger.unaccounted(self._db.int_row(PENDING) or 0)
        if missing > 0:
            self.book({"set_aside": missing})
        elif missing < 0:
            self.book({"stored": -missing})
