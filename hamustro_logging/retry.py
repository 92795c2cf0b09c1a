"""The retry policy, in one screen: what to do with each answer, and when to try again.

Only a 200 deletes events (the spec: "do not remove the events receiving a
different error code"). A refusal of the body itself splits the batch; all
else keeps the events and waits before the next attempt; the limits are
here, with their reasons. Whether an answer that is not a 200 may still
mean "stored" (so that the next send of the batch is a possible duplicate,
counted in ``resent``) is :func:`possibly_stored`.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from .transport import UNREACHABLE, Answer

__all__ = ["NOT_STORED", "Action", "Backoff", "decide", "explain", "possibly_stored"]


class Action(enum.Enum):
    """What the sender does with a batch after an answer."""

    DELIVERED = "delivered"  # delete the events
    SPLIT = "split"  # send halves; a single event that still gets it is set aside
    RETRY = "retry"  # keep everything, back off, send the same again


def decide(answer: Answer) -> Action:
    """The one place that maps an answer to what happens to the batch.

    >>> decide(Answer(200)), decide(Answer(413)), decide(Answer(301))
    (<Action.DELIVERED: 'delivered'>, <Action.SPLIT: 'split'>, <Action.RETRY: 'retry'>)
    """
    status = answer.status
    # 200 is the only answer that means "stored" (docs/protocol.md); 204 is the
    # collector's answer to an empty collection, which is never sent.
    if status == 200:
        return Action.DELIVERED
    # 400: the collector refused this body (a bad event); 413: the body is
    # too large for the collector or a proxy in front of it. Either way
    # resending the same bytes cannot work, halves can, and the good events
    # of the batch must not wait behind the bad one.
    if status in (400, 413):
        return Action.SPLIT
    # Everything else keeps the events: 5xx and 429 (the collector is busy),
    # 405 (a wrong secret), 3xx (the collector moved: redirects are never
    # followed, since a POST repeated as a GET is no delivery), any other
    # status, and no answer at all (the collector may have stored the batch,
    # but only a 200 says so; a resend is counted as a possible duplicate).
    return Action.RETRY


#: The answers that say nothing was stored: the collector's own refusals of a
#: request it read (400 to its body, 405 and 401/403 to its signature, 415 to
#: its type) and a body-size limit (413, before anything is read). Each is
#: given before the collector queues anything, and a gateway passes it on
#: unchanged.
NOT_STORED = frozenset({400, 401, 403, 405, 413, 415})


def possibly_stored(answer: Answer) -> bool:
    """Whether the collector may hold the batch after ``answer``.

    A 200 stored it. A status in :data:`NOT_STORED` did not. Any other
    status may come from a gateway (a load balancer, nginx, a CDN) that
    forwarded the request and timed out waiting, or lost the answer: a 502
    or 504 after the collector stored the batch is the common case, so
    every 5xx, 3xx, 429 or unknown status counts as "maybe". Without an
    answer, it may be stored once the whole body went out (a read timeout,
    a connection dropped after the upload), never when the connection was
    refused or the upload cut short (``Answer.sent``).

    The attempt mark the claim put on the batch stays when this is True, so
    its next send is counted in ``resent``; otherwise it is taken back.

    >>> [possibly_stored(Answer(s)) for s in (200, 502, 504, 429, 301, 400, 405, 413)]
    [True, True, True, True, True, False, False, False]
    >>> possibly_stored(Answer(None, "connection refused", sent=False))
    False
    """
    if answer.status is None:
        return answer.sent
    return answer.status not in NOT_STORED


def _is_redirect(answer: Answer) -> bool:
    return answer.status is not None and 300 <= answer.status < 400


def explain(answer: Answer) -> str:
    """One line saying what an answer means and what to check.

    Never the secret, never a URL's ``user:password@`` (``Answer.location``
    comes without it).

    >>> explain(Answer(301, location="https://other/api/v1/track"))
    '301 redirect to https://other/api/v1/track: the collector moved; set collector_url to it'
    """
    status = answer.status
    if status is None:
        if answer.error in UNREACHABLE:
            return f"{answer.error}; is the collector running at that URL?"
        return f"{answer.error}"
    if _is_redirect(answer):
        if answer.location is None:
            return f"{status} redirect without a Location: is collector_url the collector's URL?"
        return (
            f"{status} redirect to {answer.location}: the collector moved; set collector_url to it"
        )
    if status == 405:
        return "405: the collector refused the signature; check shared_secret_key"
    if status == 400:
        return "400: the collector refused the collection as malformed"
    if status == 413:
        return "413: the request body is too large for the collector or a proxy in front of it"
    if status in (429, 503):
        return f"{status}: the collector is busy or shutting down"
    return f"HTTP {status}"


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
    * 405 (wrong secret, almost always) and 3xx (the collector moved) start
      at the cap: retrying fast cannot help until someone fixes the
      configuration.
    """

    base: float = 1.0
    cap: float = 300.0
    max_retry_after: float = 3600.0
    failures: int = 0

    def next_delay(self, answer: Answer) -> float:
        """Record a failure and return the seconds to wait before the next try."""
        self.failures += 1
        if answer.status == 405 or _is_redirect(answer):
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
