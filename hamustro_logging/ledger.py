"""The folder's ledger: lifetime counts of where every event went, kept in the queue.

Every event handed to the library ends in one counted state. The counts live
in the queue database, in the ``s/ledger/`` rows of the store's key table
(``store/keys.py``), and each is changed in the same transaction as the rows
it counts, so they are shared by every process on the folder (and the CLI),
and they survive the death of the process that counted them. This module
owns the names, the reading of the rows and the sum; the store writes them
(``store/counts.py``'s ``Books``, called by ``append``, ``claim``,
``settle``, ``release``, setting rows aside, ``retry_rejected``,
``add_to_ledger``) and :class:`~hamustro_logging.reader.QueueReader` reads
them without writing.

=====================  ===============================================================
``stored``             events written into the folder (numbered, pending)
``sent``               events the collector answered 200 for (deleted)
``resent``             sends of events that an earlier request may already have
                       stored (a timeout, a dropped connection, a 5xx): the
                       duplicates the collector may hold. Counted when the batch is
                       claimed, taken back when the collector says it stored nothing
``rejected/REASON``    events the collector refused on their own (``400``; ``413``:
                       too large even alone), moved to the rejected area
``retried``            rejected events moved back to pending (``retry-rejected``)
``set_aside``          events set aside as unusable (a damaged chunk, a group whose
                       header is lost), or left in a database set aside as corrupt
``dropped/REASON``     events never stored: ``queue_full`` here; the handler adds its
                       own (``invalid``, ``buffer_full``, ``closed``...)
``since``              epoch milliseconds when counting began in this folder
=====================  ===============================================================

Nothing expires: an event stays pending until a 200, so there is no
``expired`` count. The sum that must hold, for ``accepted`` events handed
to the library since ``since``::

    accepted + retried == pending + sent + rejected + set_aside + dropped

(``stored`` is the part of ``accepted`` that reached the folder, so
``stored + retried == pending + sent + rejected + set_aside`` holds on the
store side alone.) ``resent`` is outside the sum: a resend is a second copy,
not a second event.

>>> ledger = Ledger.from_rows({"s/ledger/stored": 5, "s/ledger/sent": 3,
...                            "s/ledger/rejected/400": 1, "s/ledger/dropped/invalid": 2})
>>> ledger.rejected_total, ledger.dropped_total, ledger.unaccounted(pending=1, accepted=7)
(1, 2, 0)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LEDGER_PREFIX", "Ledger", "ledger_key"]

#: Every ledger row's key starts with this (in the ``s/`` space of store/keys.py).
LEDGER_PREFIX = "s/ledger/"
#: When counting began (epoch milliseconds).
SINCE = LEDGER_PREFIX + "since"
#: Counts without a reason.
_PLAIN = frozenset({"stored", "sent", "resent", "retried", "set_aside"})
#: Counts kept per reason: ``rejected/400``, ``dropped/queue_full``...
_BY_REASON = frozenset({"rejected", "dropped"})
_REASON = re.compile(r"[a-z0-9_]{1,40}")


def ledger_key(name: str) -> str:
    """The row of a ledger count: ``"sent"`` or ``"dropped/closed"`` (a reason: ``[a-z0-9_]``).

    >>> ledger_key("dropped/closed")
    's/ledger/dropped/closed'
    >>> ledger_key("delivered")
    Traceback (most recent call last):
    ...
    ValueError: not a ledger count: 'delivered' (stored, sent, resent, retried, set_aside, rejected/REASON, dropped/REASON)
    """  # noqa: E501 -- a doctest's expected line
    kind, slash, reason = name.partition("/")
    if (not slash and kind in _PLAIN) or (
        slash and kind in _BY_REASON and _REASON.fullmatch(reason)
    ):
        return LEDGER_PREFIX + name
    raise ValueError(
        f"not a ledger count: {name!r} (stored, sent, resent, retried, set_aside, "
        "rejected/REASON, dropped/REASON)"
    )


@dataclass(frozen=True)
class Ledger:
    """A folder's lifetime counts (see the module docstring for each)."""

    stored: int = 0
    sent: int = 0
    resent: int = 0
    rejected: Mapping[str, int] = field(default_factory=dict)
    retried: int = 0
    set_aside: int = 0
    dropped: Mapping[str, int] = field(default_factory=dict)
    since: float | None = None  # epoch seconds; None: never counted (an older folder)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def unaccounted(self, pending: int, accepted: int | None = None) -> int:
        """Events of ``accepted`` that no count holds (0 when the books balance).

        ``accepted`` defaults to ``stored`` plus ``dropped``: the store side
        alone. Negative when more is counted than was accepted.
        """
        if accepted is None:
            accepted = self.stored + self.dropped_total
        counted = pending + self.sent + self.rejected_total + self.set_aside + self.dropped_total
        return accepted + self.retried - counted

    def as_dict(self) -> dict[str, Any]:
        """What ``status --json`` and ``stats()["folder"]`` show: totals, and the reasons."""
        return {
            "stored": self.stored,
            "sent": self.sent,
            "resent": self.resent,
            "rejected": self.rejected_total,
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "retried": self.retried,
            "set_aside": self.set_aside,
            "dropped": self.dropped_total,
            "dropped_by_reason": dict(sorted(self.dropped.items())),
            "ledger_since": self.since,
        }

    @classmethod
    def from_rows(cls, rows: Mapping[str, object]) -> Ledger:
        """The ledger from its rows (key -> value); rows that are not ints count as 0."""
        plain: dict[str, int] = {}
        reasons: dict[str, dict[str, int]] = {kind: {} for kind in _BY_REASON}
        since: float | None = None
        for key, value in rows.items():
            if not key.startswith(LEDGER_PREFIX) or type(value) is not int:
                continue
            name = key[len(LEDGER_PREFIX) :]
            if key == SINCE:
                since = value / 1000
                continue
            kind, slash, reason = name.partition("/")
            if slash and kind in reasons:
                if value:
                    reasons[kind][reason] = value
            elif kind in _PLAIN:
                plain[kind] = value
        return cls(rejected=reasons["rejected"], dropped=reasons["dropped"], since=since, **plain)
