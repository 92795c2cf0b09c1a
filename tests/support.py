"""Helpers shared by the tests (not fixtures: plain functions)."""

from __future__ import annotations

import io
import socket
from pathlib import Path
from typing import Any

from hamustro_logging.collector import DevCollector
from hamustro_logging.queue import Queue
from hamustro_logging.wire import session_id, sha256hex

TEST_SECRET = "test-secret"  # noqa: S105 -- a test fixture, not a credential

#: The identity every test uses, and its session (collector.md's vector).
IDENTITY: dict[str, str] = {
    "device_id": "device-1",
    "client_id": "client-1",
    "system_version": "OS X 10.11",
    "product_version": "1.0.0",
}
SESSION = session_id(sha256hex("device-1"), "client-1", "OS X 10.11", "1.0.0")
#: Quick retries, so a test that goes through failures stays short.
FAST: dict[str, float] = {"backoff_base": 0.05, "backoff_cap": 0.5}


def tracker_config(
    collector: DevCollector | str, queue_dir: Path, **overrides: Any
) -> dict[str, Any]:
    """Keyword arguments for ClientTracker / HamustroHandler against ``collector``."""
    url = collector if isinstance(collector, str) else collector.url
    config: dict[str, Any] = {
        "collector_url": url,
        "shared_secret_key": TEST_SECRET,
        "device_id": "device-1",
        "client_id": "client-1",
        "system_version": "OS X 10.11",
        "product_version": "1.0.0",
        "queue_dir": str(queue_dir),
        "backoff_base": 0.05,
        "backoff_cap": 0.5,
    }
    config.update(overrides)
    return config


def dead_url() -> str:
    """The URL of a loopback port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def pending_in(queue_dir: Path) -> int:
    """Unsent events in a folder, read through a Queue of its own."""
    queue = Queue(queue_dir)
    try:
        return queue.pending_count()
    finally:
        queue.close()


def journal_events(queue_dir: Path) -> int:
    """Events written to the folder's journal segments (moved in or not), read without moving."""
    from hamustro_logging.journal import START, open_segment, segment_names

    count = 0
    for name in segment_names(queue_dir):
        segment = open_segment(queue_dir, name)
        if segment is None:
            continue
        try:
            count += sum(1 for _, kind, _ in segment.records(START, 1 << 30) if kind == "E")
        finally:
            segment.close()
    return count


def numbers(events: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """The (session, nr) of each received event, sorted."""
    return sorted((e["session"], e["nr"]) for e in events)


def collector_at(url: str, secret: str = TEST_SECRET) -> DevCollector:
    """A DevCollector (not started) on the port of ``url``: a collector that was down comes back.

    Events are kept for the collector and key they were logged for, so a
    test that logs while the collector is down restarts one at the same URL.
    """
    return DevCollector(port=int(url.rsplit(":", 1)[1]), secret=secret, output=io.StringIO())
