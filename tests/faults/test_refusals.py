"""Refusals and lost answers: 400 is bisected and set aside, a lost 200 is a counted resend."""

from __future__ import annotations

from pathlib import Path

import diskcache
import pytest

from hamustro_logging import ClientTracker
from hamustro_logging.collector import DevCollector
from hamustro_logging.queue import QueueFull, SafeDisk
from hamustro_logging.wire import iter_frames, varint

from ..support import assert_ledger_adds_up, numbers, tracker_config


def break_event(queue_dir: Path, nr: int) -> None:
    """Replace stored event ``nr`` with a payload that lacks its required ``nr``.

    Stands for a stored event the collector refuses (a corrupted or
    incompatible record): the collector answers 400 to any collection with it.
    """
    cache = diskcache.Cache(str(queue_dir), disk=SafeDisk)
    for key in list(cache.iterkeys()):
        if not key.startswith("e/"):
            continue
        first, count = (int(part) for part in key.split("/")[3:])
        if first <= nr < first + count:
            frames = list(iter_frames(cache.get(key)))
            body = b"\x08" + varint(1_700_000_000) + b"\x12\x03bad"
            frames[nr - first] = b"\x42" + varint(len(body)) + body
            cache.set(key, b"".join(frames))
    cache.close()


def test_a_refused_event_is_set_aside_and_the_rest_delivered(
    tmp_path: Path, collector: DevCollector, capfd: pytest.CaptureFixture[str]
) -> None:
    config = tracker_config(collector, tmp_path, queue_size=10**6)
    with ClientTracker(**config) as t:
        for i in range(9):
            t.track_event("e", user_id=i)
        break_event(tmp_path, 4)
        assert t.flush() is True  # nothing pending: 8 delivered, 1 set aside
        stats = t.stats()
        assert (stats["pending"], stats["rejected_in_queue"], stats["rejected"]) == (0, 1, 1)
        assert sorted(e["nr"] for e in collector.events()) == [1, 2, 3, 5, 6, 7, 8, 9]
        assert collector.answered()[400] >= 2  # the whole batch, then halves
        err = capfd.readouterr().err
        assert "refused 1 events" in err and "nr 4" in err and "rejected area" in err
        # Resendable: moved back, refused again, still kept.
        assert t.queue.retry_rejected() == 1
        assert t.flush() is True
        assert t.stats()["rejected_in_queue"] == 1
    assert len(collector.events()) == 8
    ledger = assert_ledger_adds_up(tmp_path, 9)  # refused twice, moved back once
    assert (ledger.sent, ledger.rejected, ledger.retried) == (8, {"400": 2}, 1)


def test_a_lost_200_gives_a_counted_duplicate_and_nothing_lost(
    tmp_path: Path, collector: DevCollector
) -> None:
    collector.accept_then_drop_next(1)  # stores the batch, then drops the connection
    with ClientTracker(**tracker_config(collector, tmp_path, queue_size=10**6)) as t:
        for _ in range(3):
            t.track_event("e")
        assert t.flush() is False  # no answer: kept
        assert t.flush() is True  # sent again
        assert t.stats()["resent"] == 3
    received = numbers(collector.wait_for(6))
    assert sorted(set(received)) == received[::2] == [(received[0][0], n) for n in (1, 2, 3)]
    assert assert_ledger_adds_up(tmp_path, 3).resent == 3


def test_a_full_queue_refuses_and_counts(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    config = tracker_config("http://127.0.0.1:9", tmp_path, queue_size=10**6, max_queue_events=2)
    with ClientTracker(**config) as t:
        assert t.track_event("a") == 1
        assert t.track_event("b") == 2
        with pytest.raises(QueueFull, match="full"):
            t.track_event("c")
        with pytest.raises(QueueFull):
            t.track_event("d")
        assert t.stats()["dropped"] == {"queue_full": 2}
    assert capfd.readouterr().err.count("is full") == 1  # said once per streak
    assert assert_ledger_adds_up(tmp_path, 4).dropped == {"queue_full": 2}
