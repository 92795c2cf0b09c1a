"""The collector misbehaving: going away and coming back, 429, slowness, answers that never come.

Complements tests/test_handler.py (dead, hanging and flaky collectors, lost
200s): here the collector restarts on the same port mid-run, the backoff is
seen to space attempts out, ``Retry-After`` is obeyed, and a slow or silent
collector neither blocks ``emit`` nor loses events. Real HTTP on loopback to
the development collector; every queue folder is in ``tmp_path``.
"""

from __future__ import annotations

import io
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hamustro_logging import ClientTracker, HamustroHandler
from hamustro_logging.collector import DevCollector
from hamustro_logging.wire import session_id, sha256hex

from ..support import TEST_SECRET, assert_ledger_adds_up, dead_url, numbers, tracker_config

SESSION = session_id(sha256hex("device-1"), "client-1", "OS X 10.11", "1.0.0")

MakeHandler = Callable[..., tuple[HamustroHandler, logging.Logger]]

_loggers = itertools.count()


@pytest.fixture
def make_handler(tmp_path: Path) -> Iterator[MakeHandler]:
    """A handler on tmp_path/"q" and a fresh non-propagating logger that feeds it.

    Everything made is detached and closed after the test.
    """
    made: list[tuple[logging.Logger, HamustroHandler]] = []

    def make(url: str, **options: Any) -> tuple[HamustroHandler, logging.Logger]:
        handler = HamustroHandler(
            **tracker_config(url, tmp_path / "q", **{"close_timeout": 2.0, **options})
        )
        logger = logging.getLogger(f"collector_faults.app{next(_loggers)}")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        made.append((logger, handler))
        return handler, logger

    yield make
    for logger, handler in made:
        logger.removeHandler(handler)
        handler.close()


def user_ids(events: list[dict[str, Any]]) -> list[int]:
    return sorted(int(e["user_id"]) for e in events)


def wait_until_leased(handler: HamustroHandler, timeout: float = 10.0) -> None:
    """Until the send thread has claimed a batch, i.e. its POST is in flight."""
    deadline = time.monotonic() + timeout
    while not any(s.leased for s in handler.tracker.queue.sessions()):
        assert time.monotonic() < deadline, "nothing was ever sent"
        time.sleep(0.01)


# -- the collector goes down and comes back on the same port ----------------------


def test_collector_down_mid_run_and_back_on_the_same_port(make_handler: MakeHandler) -> None:
    first = DevCollector(secret=TEST_SECRET, output=io.StringIO()).start()
    try:
        port = int(first.url.rsplit(":", 1)[1])
        handler, log = make_handler(first.url, queue_size=1000)
        for i in range(20):
            log.info("e", extra={"event": "restart.e", "user_id": i})
        assert handler.flush(timeout=10) is True
    finally:
        first.stop()
    assert user_ids(first.events()) == list(range(20))

    failed_before = handler.stats()["failed_attempts"]
    for i in range(20, 40):
        log.info("e", extra={"event": "restart.e", "user_id": i})
    assert handler.flush(timeout=2) is False  # nobody listens: kept
    stats = handler.stats()
    assert stats["pending"] == 20
    assert stats["failed_attempts"] > failed_before

    with DevCollector(port=port, secret=TEST_SECRET, output=io.StringIO()) as second:
        assert second.url == first.url
        assert handler.flush(timeout=10) is True
        received = first.events() + second.events()
    assert user_ids(received) == list(range(40))
    assert numbers(received) == [(SESSION, nr) for nr in range(1, 41)]  # none lost, none twice
    assert handler.stats()["pending"] == 0
    assert assert_ledger_adds_up(handler.tracker.queue_dir, 40).sent == 40


# -- backoff spaces attempts out -----------------------------------------------------


def most_attempts(seconds: float, base: float, cap: float) -> int:
    """The most attempts the backoff allows in ``seconds``.

    The n-th failure waits at least half of min(cap, base * 2**(n-1)) (full
    jitter picks in [delay/2, delay]); the first attempt comes at once.
    """
    attempts, elapsed, delay = 1, 0.0, base
    while True:
        elapsed += min(cap, delay) / 2
        if elapsed > seconds:
            return attempts
        attempts += 1
        delay *= 2


def test_backoff_spaces_attempts_out_against_a_dead_collector(
    make_handler: MakeHandler,
) -> None:
    # queue_size=1: every event is a reason to send, so without a backoff the
    # send thread would try once per event (200 times).
    handler, log = make_handler(dead_url(), queue_size=1, backoff_base=0.2, backoff_cap=1.0)
    started = time.monotonic()
    for i in range(200):
        log.info("e", extra={"event": "backoff.e", "user_id": i})
        time.sleep(0.01)
    elapsed = time.monotonic() - started
    attempts = handler.stats()["failed_attempts"]
    # Waits of at least 0.1, 0.2, 0.4, 0.5, 0.5, ... s (half of 0.2 doubling,
    # capped at 1.0): in ~2 s that is at most about 6 attempts, 8 in 2.7 s.
    # The bound is computed from the time the loop really took, so a slow
    # machine cannot make it fail; the point is: nowhere near one per event.
    assert 2 <= attempts <= most_attempts(elapsed, base=0.2, cap=1.0)
    assert attempts < 20
    assert handler.stats()["pending"] == 200
    assert assert_ledger_adds_up(handler.tracker.queue_dir, 200).resent == 0  # never reached


# -- 429 with Retry-After -------------------------------------------------------------


def test_429_retry_after_is_obeyed_and_a_forced_flush_delivers(
    collector: DevCollector, tmp_path: Path
) -> None:
    collector.fail_next(1, 429, retry_after="1")
    # backoff_base 0.05: the jitter alone would retry within 0.05 s; only the
    # Retry-After can push the next attempt a second away.
    with ClientTracker(**tracker_config(collector, tmp_path / "q", queue_size=1)) as t:
        t.track_event("e", user_id=1)  # due at once: sent on this thread, answered 429
        assert collector.answered() == {429: 1}
        assert t.delivery.retry_at - time.monotonic() >= 0.9
        assert "429" in t.stats()["last_error"]

        t.track_event("e", user_id=2)  # due again, but within the Retry-After: no request
        assert collector.answered() == {429: 1}
        assert t.stats()["pending"] == 2

        assert t.flush(timeout=10) is True  # an explicit flush does not wait
        assert user_ids(collector.events()) == [1, 2]
        assert collector.answered() == {429: 1, 200: 1}
    # A 429 may come from a gateway that forwarded: the resend is counted.
    assert assert_ledger_adds_up(tmp_path / "q", 2).resent == 1


# -- a slow collector ------------------------------------------------------------------


def test_slow_answers_deliver_everything_and_emit_stays_cheap(
    collector: DevCollector, make_handler: MakeHandler
) -> None:
    collector.set_delay(1.5)  # longer than the 1 s connect timeout, within the 5 s read one
    handler, log = make_handler(collector.url, queue_size=1, timeout=(1, 5))
    log.info("e", extra={"event": "slow.e", "user_id": 0})
    wait_until_leased(handler)

    for i in range(1, 101):
        log.info("e", extra={"event": "slow.e", "user_id": i})
    # The first POST, in flight, has no answer yet (it takes 1.5 s): the 100
    # emits did not wait for it.
    assert collector.answered() == {}

    assert handler.flush(timeout=20) is True
    events = collector.events()
    assert user_ids(events) == list(range(101))
    assert numbers(events) == [(SESSION, nr) for nr in range(1, 102)]
    stats = handler.stats()
    assert (stats["sent"], stats["failed_attempts"], stats["dropped"]) == (101, 0, {})
    assert assert_ledger_adds_up(handler.tracker.queue_dir, 101).resent == 0


# -- an answer that never comes -------------------------------------------------------


def test_an_answer_that_never_comes_times_out_and_a_later_attempt_delivers(
    collector: DevCollector, make_handler: MakeHandler
) -> None:
    # The hung request is stored only after its 30 s (collector/server.py: the wait
    # comes before the checks), i.e. never while this test runs; stop() turns
    # it into a 503. So the collector gets each event once, yet the client
    # must count the redelivery as a possible duplicate: it cannot know.
    collector.hang_next(1, seconds=30)
    handler, log = make_handler(collector.url, queue_size=5, timeout=(0.5, 0.5))
    for i in range(5):
        log.info("e", extra={"event": "hang.e", "user_id": i})
    events = collector.wait_for(5, timeout=20)  # by the send thread, after the backoff
    assert handler.flush(timeout=10) is True
    assert numbers(events) == [(SESSION, nr) for nr in range(1, 6)]
    assert user_ids(collector.events()) == list(range(5))
    stats = handler.stats()
    assert "no answer within 0.5 s" in stats["last_error"]
    assert stats["failed_attempts"] >= 1
    assert stats["sent"] == 5
    assert stats["resent"] == 5  # the whole timed-out batch (all 5: sent only once due)
    assert assert_ledger_adds_up(handler.tracker.queue_dir, 5).resent == 5
