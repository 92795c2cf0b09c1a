"""structlog (standard-library integration) and loguru (the handler as a sink)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from hamustro_logging import HamustroHandler
from hamustro_logging.collector import DevCollector

from .support import tracker_config


@pytest.fixture
def handler(tmp_path: Path, collector: DevCollector) -> Iterator[HamustroHandler]:
    h = HamustroHandler(**tracker_config(collector, tmp_path, queue_size=10**6, event_key="track"))
    yield h
    h.close()


def test_structlog_through_the_standard_library(
    collector: DevCollector, handler: HamustroHandler
) -> None:
    structlog = pytest.importorskip("structlog")
    target = logging.getLogger("tests.structlog")
    target.propagate = False
    target.setLevel(logging.INFO)
    target.addHandler(handler)
    try:
        structlog.configure(
            processors=[structlog.stdlib.add_log_level, structlog.stdlib.render_to_log_kwargs],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=False,
        )
        log = structlog.get_logger("tests.structlog").bind(user_id=7)
        log.info("order placed", track="order_placed", params={"total": 12})
        log.info("a structlog line without a tracking event")
        assert handler.flush(timeout=10)
    finally:
        structlog.reset_defaults()
        target.removeHandler(handler)
    (event,) = collector.wait_for(1)
    assert (event["event"], event["user_id"], event["parameters"]) == (
        "order_placed", 7, '{"total":12}',
    )  # fmt: skip


def test_loguru_with_the_handler_as_a_sink(tmp_path: Path, collector: DevCollector) -> None:
    loguru = pytest.importorskip("loguru")
    handler = HamustroHandler(**tracker_config(collector, tmp_path, queue_size=10**6))
    sink = loguru.logger.add(handler, format="{message}")
    try:
        loguru.logger.bind(event="signup", user_id=3, params={"plan": "pro"}).info("signed up")
        loguru.logger.info("a loguru line without an event")
        assert handler.flush(timeout=10)
    finally:
        loguru.logger.remove(sink)
        handler.close()
    (event,) = collector.wait_for(1)
    assert (event["event"], event["user_id"], event["parameters"]) == (
        "signup", 3, '{"plan":"pro"}',
    )  # fmt: skip
