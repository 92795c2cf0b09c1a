"""Redaction and sampling with standard ``logging.Filter`` objects on the handler.

    handler = HamustroHandler(...)
    handler.addFilter(RedactParams({"email", "phone"}))  # PII never leaves the process
    handler.addFilter(SampleByUser(0.10))                # the events of 10% of the users

A filter on the handler sees each record before the handler maps it, on the
thread that logs, and only for this handler (other handlers of the logger
are not filtered by it). ``docs/filters.md`` explains them; the tests run
them against the development collector.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection

from hamustro_logging import current_context


# --8<-- [start:redact]
class RedactParams(logging.Filter):
    """Replace the values of some params (an email, a phone number) before the event is mapped.

    Covers the record's params and those of the ``context()`` in force: the
    record's params win over the context's key by key, so a key masked in
    the record hides the context's value too. ``mask=None`` removes the
    value instead (schema 2 then leaves the pair out; schema 1 sends
    ``null``). The record gets a new dict (the caller's is not changed);
    handlers called after this one see the masked params. Records without
    an event, and schema 1's params given as text, are left as they are.
    """

    def __init__(
        self, names: Collection[str], mask: str | None = "[redacted]", event_key: str = "event"
    ) -> None:
        super().__init__()
        self.names = frozenset(names)
        self.mask = mask
        self.event_key = event_key

    def filter(self, record: logging.LogRecord) -> bool:
        if self.event_key not in record.__dict__:
            return True  # not an event: nothing of ours to redact
        own = record.__dict__.get("params")
        if own is not None and not isinstance(own, dict):
            return True  # text or a list: the app chose the exact form
        inherited = current_context().get("params")
        present = set(own or ()) | (set(inherited) if isinstance(inherited, dict) else set())
        hidden = self.names & present
        if hidden:
            record.params = {**(own or {}), **dict.fromkeys(hidden, self.mask)}
        return True  # always kept: only rewritten


# --8<-- [end:redact]


# --8<-- [start:sample]
class SampleByUser(logging.Filter):
    """Keep the events of a fixed share of the users: all of a user's events, or none.

    Which users are kept depends only on the user id (the record's, else
    the ``context()``'s) and ``salt``: a hash that is the same in every
    process, on every host and after a restart (Python's own ``hash()`` of
    a str changes from one process to the next). ``7`` and ``"7"`` are one
    user. Events without a user, and records without an event, are kept.
    A sampled-out record never reaches the handler, so it is not counted
    in ``stats()``.
    """

    def __init__(self, rate: float, salt: str = "", event_key: str = "event") -> None:
        super().__init__()
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in 0..1, got {rate!r}")
        self.limit = int(rate * 2**64)  # users whose hash is below it are kept
        self.salt = salt
        self.event_key = event_key

    def keeps(self, user_id: object) -> bool:
        """Whether the events of ``user_id`` are kept."""
        digest = hashlib.blake2b(f"{self.salt}:{user_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") < self.limit

    def filter(self, record: logging.LogRecord) -> bool:
        if self.event_key not in record.__dict__:
            return True
        user = record.__dict__.get("user_id")
        if user is None:
            user = current_context().get("user_id")
        return user is None or self.keeps(user)


# --8<-- [end:sample]
