"""Issue 10: one batch that can never succeed, a slow collector, a dead sender's lease, turns.

Everything against the real development collector on loopback; the dead
sender is a real subprocess killed with SIGKILL.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hamustro_logging import ClientTracker, HamustroHandler
from hamustro_logging.collector import DevCollector
from hamustro_logging.mapping import build_event
from hamustro_logging.wire import session_id, sha256hex

from ..support import numbers, tracker_config

ROOT = Path(__file__).resolve().parents[2]
#: A params value of about 1 KB.
KB = {"pad": "x" * 1000}


# -- 413: a body too large for a proxy ------------------------------------------------------


def test_413_splits_remembers_the_size_and_delivers_everything_once(
    tmp_path: Path, collector: DevCollector
) -> None:
    """The issue's proxy: 100 KB limit, 410 events of ~1 KB, 1 MiB requests: 0 in 20 s before."""
    collector.max_body = 100_000
    config = tracker_config(
        collector, tmp_path, queue_size=10**6, max_batch_bytes=1 << 20, max_event_bytes=200_000
    )
    with ClientTracker(**config) as t:
        for i in range(410):
            t.track_event("e", user_id=i, params=KB)
        t.track_event("huge", user_id=10_000, params={"pad": "y" * 150_000})  # alone > limit
        for i in range(410, 420):
            t.track_event("e", user_id=i, params=KB)
        started = time.monotonic()
        assert t.flush(timeout=60) is True
        assert time.monotonic() - started < 30
        answered = collector.answered()
        assert sum(answered.values()) <= 40, answered  # a few halvings, not thousands of tries
        assert 25_000 <= t.delivery.max_batch_bytes <= 100_000  # the size learnt, near the limit
        stats = t.stats()
        assert (stats["sent"], stats["rejected"], stats["rejected_in_queue"]) == (420, 1, 1)
        assert stats["pending"] == 0
        received = collector.events()
        assert sorted(e["user_id"] for e in received) == list(range(420))  # each once
        assert len(set(numbers(received))) == 420

        # Later batches fit: no more 413 for what is logged after.
        refused = answered.get(413, 0)
        for i in range(420, 620):
            t.track_event("e", user_id=i, params=KB)
        assert t.flush(timeout=30) is True
        assert collector.answered().get(413, 0) == refused
        assert len(collector.wait_for(620)) == 620


def test_413_with_the_handler_later_batches_fit_too(
    tmp_path: Path, collector: DevCollector, log: logging.Logger
) -> None:
    """The handler writes a burst as large chunks: once the size is learnt, none is sent too big."""
    collector.max_body = 100_000
    handler = HamustroHandler(
        **tracker_config(collector, tmp_path, queue_size=10**6, max_batch_bytes=1 << 20)
    )
    log.addHandler(handler)
    for i in range(410):
        log.info("e", extra={"event": "e", "user_id": i, "params": KB})
    assert handler.flush(timeout=60) is True
    assert len(collector.wait_for(410)) == 410
    refused = collector.answered().get(413, 0)
    assert 0 < refused <= 10

    for i in range(410, 820):
        log.info("e", extra={"event": "e", "user_id": i, "params": KB})
    assert handler.flush(timeout=60) is True
    received = collector.wait_for(820)
    assert sorted(e["user_id"] for e in received) == list(range(820))
    # What is stored after the size was learnt is never sent over it again.
    assert collector.answered().get(413, 0) == refused, collector.answered()


def test_the_default_request_size_passes_a_100_kb_proxy(
    tmp_path: Path, collector: DevCollector, log: logging.Logger
) -> None:
    """Defaults only (the issue measured a 1,044,684-byte request with them)."""
    collector.max_body = 100_000
    handler = HamustroHandler(**tracker_config(collector, tmp_path, queue_size=10**6))
    log.addHandler(handler)
    for i in range(2000):
        log.info("e", extra={"event": "e", "user_id": i, "params": {"pad": "z" * 200}})
    assert handler.flush(timeout=60) is True
    assert len(collector.wait_for(2000)) == 2000
    assert 413 not in collector.answered(), collector.answered()


# -- a slow collector ---------------------------------------------------------------------


def test_a_slow_collector_within_the_request_timeout_gets_each_event_once(
    tmp_path: Path, collector: DevCollector
) -> None:
    collector.set_delay(3)
    config = tracker_config(collector, tmp_path, queue_size=10**6, request_timeout=10)
    with ClientTracker(**config) as t, ClientTracker(**config) as other:
        for i in range(30):
            (t if i % 2 else other).track_event("e", user_id=i)
        # Two senders on one folder, both while the collector is slow.
        assert t.flush(timeout=30) is True
        assert other.flush(timeout=30) is True
        stats = t.stats()
        assert stats["resent"] == 0 and other.stats()["resent"] == 0
    received = collector.wait_for(30)
    assert sorted(e["user_id"] for e in received) == list(range(30))


def test_a_request_that_gives_up_then_resent_is_counted(
    tmp_path: Path, collector: DevCollector
) -> None:
    """The collector stores what it answers too late for the client: the resend is counted."""
    collector.set_delay(3)
    config = tracker_config(collector, tmp_path, queue_size=10**6, request_timeout=1)
    with ClientTracker(**config) as t:
        for i in range(20):
            t.track_event("e", user_id=i)
        assert t.flush(timeout=20) is False  # gave up after request_timeout (1 s)
        # ... before the collector's answer (it comes after 3 s): not waited for.
        assert collector.answered() == {}
        assert len(collector.wait_for(20, timeout=10)) == 20  # stored anyway, once
        collector.set_delay(0)
        assert t.flush(timeout=20) is True
        stats = t.stats()
        assert (stats["sent"], stats["resent"], stats["pending"]) == (20, 20, 0)
    received = collector.wait_for(40)
    assert sorted(e["user_id"] for e in received) == sorted(list(range(20)) * 2)


# -- a lease whose owner is gone ---------------------------------------------------------

CLAIM_AND_WAIT = """
import sys, time
from hamustro_logging.queue import Queue, new_owner
queue = Queue(sys.argv[1])
batch = queue.claim(new_owner(), 3600)  # an hour: only the owner's death frees it early
print(batch.count, flush=True)
time.sleep(3600)
"""


def test_the_lease_of_a_killed_sender_is_taken_over_at_once(
    tmp_path: Path, collector: DevCollector
) -> None:
    config = tracker_config(collector, tmp_path, queue_size=10**6)
    with ClientTracker(**config) as t:
        for i in range(50):
            t.track_event("e", user_id=i)
    child = subprocess.Popen(
        [sys.executable, "-c", CLAIM_AND_WAIT, str(tmp_path)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert child.stdout is not None
        claimed = int(child.stdout.readline())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)  # reaped: the pid is gone, not a zombie
        if child.stdout is not None:
            child.stdout.close()
    assert claimed == 50
    with ClientTracker(**config) as t:
        started = time.monotonic()
        assert t.flush(timeout=20) is True
        assert time.monotonic() - started < 5  # not the hour of the lease
        # The dead sender counted an attempt before its POST: this may be a duplicate.
        assert t.stats()["resent"] == 50
    assert sorted(e["user_id"] for e in collector.wait_for(50)) == list(range(50))


# -- turns -----------------------------------------------------------------------------------


def _sorted_versions() -> tuple[str, str]:
    """Two product versions whose sessions sort in that order (the backlog's first)."""

    def session(version: str) -> str:
        return session_id(sha256hex("device-1"), "client-1", "OS X 10.11", version)

    late = "2.0.0"
    early = next(v for v in (f"1.0.{i}" for i in range(100)) if session(v) < session(late))
    return early, late


def test_a_big_backlog_of_one_session_does_not_hold_up_another(
    tmp_path: Path, collector: DevCollector
) -> None:
    backlog_version, small_version = _sorted_versions()
    big = tracker_config(collector, tmp_path, queue_size=10**6, product_version=backlog_version)
    small = tracker_config(collector, tmp_path, queue_size=10**6, product_version=small_version)
    with ClientTracker(**big) as a, ClientTracker(**small) as b:
        events = [build_event("backlog", i, None, False, None, 1e9) for i in range(20_000)]
        for start in range(0, len(events), 500):
            a.store(events[start : start + 500])
        for i in range(10):
            b.track_event("small", user_id=i)
        assert a.session < b.session  # the backlog's keys come first
        assert a.flush(timeout=120) is True
    received = collector.wait_for(20_010)
    order = [e["event"] for e in received]
    positions = [i for i, name in enumerate(order) if name == "small"]
    assert len(positions) == 10
    # Delivered in the first few requests (500 events each), not after 20,000.
    assert max(positions) < 3 * 500, positions
