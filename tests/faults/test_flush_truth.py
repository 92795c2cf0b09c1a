"""``flush()`` tells the truth: True only when every event the handler accepted was stored."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hamustro_logging import HamustroHandler
from hamustro_logging.collector import DevCollector

from ..support import tracker_config


def test_flush_is_false_when_the_collector_refused_an_event(
    collector: DevCollector,
    tmp_path: Path,
    log: logging.Logger,
    capsys: pytest.CaptureFixture[str],
) -> None:
    handler = HamustroHandler(**tracker_config(collector, tmp_path / "q", queue_size=10**6))
    log.addHandler(handler)
    collector.fail_next(1, 400)  # the single event's request is refused: it is never stored
    log.info("e", extra={"event": "refused"})
    assert handler.flush(timeout=30) is False
    assert collector.events() == []
    assert handler.stats()["rejected_in_queue"] == 1
    assert "refused by the collector or set aside" in capsys.readouterr().err
    log.info("e", extra={"event": "stored"})
    assert handler.flush(timeout=30) is True  # the refusal was said once; this one is stored


def test_flush_is_false_when_an_event_was_dropped(
    collector: DevCollector, tmp_path: Path, log: logging.Logger
) -> None:
    handler = HamustroHandler(**tracker_config(collector, tmp_path / "q", queue_size=10**6))
    log.addHandler(handler)
    log.info("e", extra={"event": "ok"})
    log.info("e", extra={"event": "bad", "user_id": "not an int"})  # dropped: invalid
    assert handler.flush(timeout=30) is False
    assert handler.stats()["dropped"] == {"invalid": 1}
    assert [e["event"] for e in collector.events()] == ["ok"]


def test_a_dropped_record_is_in_the_folders_ledger(
    collector: DevCollector, tmp_path: Path, log: logging.Logger
) -> None:
    handler = HamustroHandler(**tracker_config(collector, tmp_path / "q", queue_size=10**6))
    log.addHandler(handler)
    log.info("e", extra={"event": "ok"})
    log.info("e", extra={"event": "bad", "user_id": "not an int"})
    handler.flush(timeout=30)
    ledger = handler.tracker.queue.ledger()
    assert ledger.dropped == {"invalid": 1}
    assert ledger.sent == 1
