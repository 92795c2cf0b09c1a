"""The retry policy, in one screen: what to do with each answer, and when to try again.

Only a 200 deletes events (the spec: "do not remove the events receiving a
different error code"). Everything else keeps them and waits before the next
attempt; the limits are here, with their reasons.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from .transport import Answer

__all__ = ["Action", "Backoff", "decide", "explain"]


class Action(enum.Enum):
    DELIVERED = "delivered"
    SPLIT = "split"
    RETRY = "retry"


def decide(answer: Answer) -> Action:
    """What to do with the events a request carried (interim; helper T writes the real one)."""
    if answer.status == 200:
        return Action.DELIVERED
    if answer.status in (400, 413):
        return Action.SPLIT
    return Action.RETRY


def explain(answer: Answer) -> str:
    """One line saying what an answer means and what to check."""
    if answer.status is None:
        return f"{answer.error}; is the collector running at that URL?"
    if answer.status == 405:
        return "405: the collector refused the signature; check shared_secret_key"
    if answer.status == 400:
        return "400: the collector refused the collection as malformed"
    if answer.status in (429, 503):
        return f"{answer.status}: the collector is busy or shutting down"
    return f"HTTP {answer.status}"


@dataclass
class Backoff:
    """Exponential backoff with full jitter and a cap, honouring ``Retry-After``.

    * ``base`` 1 s: a collector restart takes seconds; retrying sooner only
      burns CPU on both sides.
    * doubling per failure, capped at ``cap`` (300 s): a collector down for
      an hour is retried every few minutes, never given up on (events stay on
      disk until a 200, as the spec demands).
    * full jitter (a uniform pick in [delay/2, delay]): many workers that
      failed together do not come back together.
    * ``Retry-After`` is a floor, itself capped at ``max_retry_after``
      (1 hour), so a wrong header cannot park the queue for days.
    * 405 (wrong secret, almost always) starts at the cap: retrying fast
      cannot help until someone fixes the configuration.
    """

    base: float = 1.0
    cap: float = 300.0
    max_retry_after: float = 3600.0
    failures: int = 0

    def next_delay(self, answer: Answer) -> float:
        """Record a failure and return the seconds to wait before the next try."""
        self.failures += 1
        if answer.status == 405:
            delay = self.cap
        else:
            delay = min(self.cap, self.base * 2 ** min(self.failures - 1, 30))
        delay = random.uniform(delay / 2, delay)
        if answer.retry_after is not None:
            delay = max(delay, min(answer.retry_after, self.max_retry_after))
        return delay

    def reset(self) -> None:
        """A 200 ends the streak."""
        self.failures = 0
