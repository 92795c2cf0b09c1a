"""Counters a tracker or handler keeps about itself (this process only).

Updated from the application's threads and the library's threads; a lock
keeps them consistent. ``snapshot()`` is what ``stats()`` returns.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["Stats"]


class Stats:
    """Counters of one tracker; see ``snapshot`` for the meaning of each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.queued = 0
        self.sent = 0
        self.resent = 0
        self.rejected = 0
        self.failed_attempts = 0
        self.dropped: dict[str, int] = {}
        self.last_error: str | None = None

    def reset_lock(self) -> None:
        """In a forked child: a lock a parent thread held at the fork stays held."""
        self._lock = threading.Lock()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def drop(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.dropped[reason] = self.dropped.get(reason, 0) + n

    def failed(self, error: str) -> None:
        with self._lock:
            self.failed_attempts += 1
            self.last_error = error

    def snapshot(self) -> dict[str, Any]:
        """
        * ``queued``: events this process stored in the queue;
        * ``sent``: events this process delivered (collector answered 200);
        * ``resent``: of those, events sent again after an attempt whose
          answer never came (the collector may have stored them twice);
        * ``rejected``: events this process set aside after the collector
          refused them with 400 (kept on disk; see ``retry-rejected``);
        * ``failed_attempts``: requests that did not get a 200;
        * ``dropped``: events not queued, by reason (``invalid``: a bad
          field; ``storage``: the queue could not be written; ``buffer_full``);
        * ``last_error``: the last failure, one line.
        """
        with self._lock:
            return {
                "queued": self.queued,
                "sent": self.sent,
                "resent": self.resent,
                "rejected": self.rejected,
                "failed_attempts": self.failed_attempts,
                "dropped": dict(self.dropped),
                "last_error": self.last_error,
            }
