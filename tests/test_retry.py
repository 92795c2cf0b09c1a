"""The retry rule (retry.py), read directly and through a delivery against the dev collector.

Each claim of the policy fails a test here when it is removed: only a 200 is
a delivery; 405 and 3xx wait the backoff cap from their first failure;
``Retry-After`` is a floor, capped at ``max_retry_after`` (1 h), for 503 and
429 alike. Through delivery the bounds are read from ``Delivery.retry_at``
against the clock taken before the request, so no timing is assumed.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hamustro_logging import ClientTracker
from hamustro_logging.collector import DevCollector
from hamustro_logging.retry import Action, Backoff, decide
from hamustro_logging.transport import Answer

from .support import tracker_config

#: Draws per check: the jitter is random, the rule must hold for every draw.
DRAWS = 200


@pytest.mark.parametrize(
    ("answer", "action"),
    [
        (Answer(200), Action.DELIVERED),
        (Answer(201), Action.RETRY),
        (Answer(204), Action.RETRY),
        (Answer(301, location="http://other/api/v1/track"), Action.RETRY),
        (Answer(302), Action.RETRY),
        (Answer(303), Action.RETRY),
        (Answer(307), Action.RETRY),
        (Answer(308), Action.RETRY),
        (Answer(400), Action.SPLIT),
        (Answer(413), Action.SPLIT),
        (Answer(405), Action.RETRY),
        (Answer(429, retry_after=5), Action.RETRY),
        (Answer(500), Action.RETRY),
        (Answer(502), Action.RETRY),
        (Answer(503, retry_after=5), Action.RETRY),
        (Answer(None, error="no answer within 10 s"), Action.RETRY),
        (Answer(None, error="connection refused", sent=False), Action.RETRY),
    ],
    ids=lambda value: str(value.status) if isinstance(value, Answer) else value.value,
)
def test_only_a_200_is_a_delivery(answer: Answer, action: Action) -> None:
    assert decide(answer) is action


def delays(answers: list[Answer], backoff: Backoff) -> list[float]:
    return [backoff.next_delay(answer) for answer in answers]


@pytest.mark.parametrize("status", [405, 301, 308])
def test_405_and_a_redirect_wait_the_cap_from_the_first_failure(status: int) -> None:
    for _ in range(DRAWS):
        backoff = Backoff(base=1.0, cap=300.0)
        first = backoff.next_delay(Answer(status))
        assert backoff.cap / 2 <= first <= backoff.cap
    # Any other failure starts at the base: the cap is what sets these apart.
    assert Backoff(base=1.0, cap=300.0).next_delay(Answer(500)) <= 1.0


@pytest.mark.parametrize("status", [503, 429])
def test_retry_after_is_a_floor_above_the_cap(status: int) -> None:
    for _ in range(DRAWS):
        backoff = Backoff(base=1.0, cap=30.0)
        assert backoff.next_delay(Answer(status, retry_after=120.0)) >= 120.0


@pytest.mark.parametrize("status", [503, 429])
def test_retry_after_is_capped_at_max_retry_after(status: int) -> None:
    for _ in range(DRAWS):
        backoff = Backoff(base=1.0, cap=300.0)
        week = 7 * 24 * 3600.0
        assert backoff.next_delay(Answer(status, retry_after=week)) == backoff.max_retry_after
    assert Backoff().max_retry_after == 3600.0  # the documented hour


def test_a_short_retry_after_does_not_shorten_the_backoff() -> None:
    for _ in range(DRAWS):
        backoff = Backoff(base=1.0, cap=300.0)
        delays([Answer(500)] * 5, backoff)  # the sixth failure waits 16..32 s
        assert backoff.next_delay(Answer(503, retry_after=1.0)) >= 16.0


# -- through a delivery --------------------------------------------------------------

#: A cap far from the base, so that waiting the cap cannot pass for the backoff's start.
BASE, CAP = 0.05, 60.0


def tracker(collector: DevCollector, tmp_path: Path) -> ClientTracker:
    config = tracker_config(collector, tmp_path / "q", queue_size=1, backoff_base=BASE)
    return ClientTracker(**{**config, "backoff_cap": CAP})


def wait_after(t: ClientTracker, before: float, after: float) -> tuple[float, float]:
    """The wait before the next try: its bounds, from clocks taken around the failure."""
    return t.delivery.retry_at - after, t.delivery.retry_at - before


def test_a_405_is_retried_at_the_backoff_cap_through_a_delivery(
    collector: DevCollector, tmp_path: Path
) -> None:
    collector.fail_next(1, 405)
    with tracker(collector, tmp_path) as t:
        before = time.monotonic()
        t.track_event("e", user_id=1)  # due at once: sent on this thread, answered 405
        after = time.monotonic()
        assert collector.answered() == {405: 1}
        low, high = wait_after(t, before, after)
        assert high >= CAP / 2 and low <= CAP, (low, high)
        t.track_event("e", user_id=2)  # due, but within the wait: no request
        assert collector.answered() == {405: 1}
        assert t.flush(timeout=10) is True  # an explicit flush does not wait
    assert sorted(e["user_id"] for e in collector.wait_for(2)) == [1, 2]


@pytest.mark.parametrize("status", [503, 429])
def test_retry_after_through_a_delivery_is_obeyed_above_the_cap_and_capped_at_an_hour(
    collector: DevCollector, tmp_path: Path, status: int
) -> None:
    hour = Backoff().max_retry_after
    for retry_after, expected in ((2 * CAP, 2 * CAP), (4 * hour, hour)):
        collector.fail_next(1, status, retry_after=str(int(retry_after)))
        with tracker(collector, tmp_path) as t:
            before = time.monotonic()
            t.track_event("e")  # answered with the Retry-After
            after = time.monotonic()
            low, high = wait_after(t, before, after)
            assert low <= expected <= high, (retry_after, low, high)
            assert t.flush(timeout=10) is True
    assert collector.answered() == {status: 2, 200: 2}
