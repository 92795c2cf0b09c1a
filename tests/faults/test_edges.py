"""Edge cases found in review: a refused header, a missing CA bundle, DNS off the emit path."""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from hamustro_logging import ClientTracker, HamustroHandler
from hamustro_logging.collector import DevCollector
from hamustro_logging.mapping import build_event
from hamustro_logging.wire import collection_header

from ..support import tracker_config


def test_a_refused_collection_holds_its_session_back_and_the_others_go_on(
    tmp_path: Path, collector: DevCollector
) -> None:
    """When no part of a batch is accepted, the collection itself is at fault, not events."""
    # The session is held back for at least half of backoff_base after its
    # first refusal: a minute, far longer than the passes below take on a
    # loaded machine (the 0.05 s of the fast test settings is not).
    config = tracker_config(collector, tmp_path, queue_size=10**6, backoff_base=60.0)
    with ClientTracker(**{**config, "backoff_cap": 300.0}) as t:
        # A session whose header the collector refuses (its session id does not
        # match its fields), stored as a real group of this sender's.
        bad_header = collection_header(t.device_id, "client-1", "0" * 32, "OS X 10.11", "1.0.0")
        bad_hid = t.queue.register_header("0" * 32, bad_header, t.destination)
        t.queue.append("0" * 32, bad_hid, [build_event("bad", None, None, False, None, 1e9)] * 6)
        for _ in range(4):
            t.track_event("good")
        assert t.flush() is False
        stats = t.stats()
        assert (stats["pending"], stats["rejected_in_queue"], stats["sent"]) == (6, 0, 4)
        assert "400" in (stats["last_error"] or "")
        assert [e["event"] for e in collector.wait_for(4)] == ["good"] * 4
        refused = collector.answered()[400]
        for _ in range(3):  # later passes hold that session back: no request for it
            t.track_event("good")
            t.delivery.drain()
        assert collector.answered()[400] == refused
        assert len(collector.wait_for(7)) == 7
        assert t.queue.pending_count() == 6


def test_a_missing_ca_bundle_is_a_failed_send_not_an_exception(tmp_path: Path) -> None:
    config = tracker_config(
        "https://127.0.0.1:9", tmp_path, queue_size=1, verify=str(tmp_path / "missing-ca.pem")
    )
    with ClientTracker(**config) as t:
        assert t.track_event("e") == 1  # the send inside failed; nothing raised
        assert t.flush() is False
        stats = t.stats()
        assert stats["pending"] == 1 and "OSError" in (stats["last_error"] or "")


def test_emit_never_looks_up_dns(
    tmp_path: Path, collector: DevCollector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS is a boundary: record who calls getaddrinfo, and when."""
    lookups: list[str] = []
    real = socket.getaddrinfo

    def recording(*args: Any, **kwargs: Any) -> Any:
        lookups.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    handler = HamustroHandler(**tracker_config(collector, tmp_path, durable=True))
    log = logging.getLogger("tests.edges.dns")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        handler.tracker._ip._at = -1e9  # type: ignore[union-attr]  # the cached address is stale
        lookups.clear()  # the constructor resolved the IP literal (no DNS for a literal)
        log.info("e", extra={"event": "e"})
        assert "MainThread" not in lookups  # a durable emit wrote without a lookup
        assert handler.flush(timeout=10)
    finally:
        log.removeHandler(handler)
        handler.close()
    (event,) = collector.wait_for(1)
    assert event["ip"] == "127.0.0.1"  # an IP-literal collector: found at construction


def test_a_password_in_the_collector_url_is_never_shown(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    url = "http://user:url-password@127.0.0.1:9"
    with ClientTracker(**tracker_config(url, tmp_path, queue_size=1)) as t:
        t.track_event("e")
        assert "url-password" not in repr(t) and "url-password" not in repr(t.transport)
        assert "url-password" not in (t.stats()["last_error"] or "")
    err = capfd.readouterr().err
    assert "cannot deliver to http://***@127.0.0.1:9/api/v1/track" in err
    assert "url-password" not in err


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError("and neither is this")


class _Hostile:
    def __str__(self) -> str:
        raise _Unprintable


def test_a_value_whose_str_raises_an_unprintable_error_never_reaches_the_app(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    handler = HamustroHandler(**tracker_config("http://127.0.0.1:9", tmp_path))
    log = logging.getLogger("edges.hostile")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("x", extra={"event": "e", "params": {"v": _Hostile()}})  # must not raise
        log.warning("x", extra={"event": "ok"})
        handler.flush(timeout=0.1)  # on disk (nothing listens on port 9: kept there)
        stats = handler.stats()
    finally:
        log.removeHandler(handler)
        handler.close()
    assert stats["dropped"] == {"invalid": 1}
    assert stats["pending"] == 1  # the next event is unaffected
    line = capfd.readouterr().err.splitlines()[0]
    assert "field 'params'" in line and "_Unprintable (its message cannot be shown)" in line


def test_a_huge_event_name_is_reported_as_the_event_field(tmp_path: Path) -> None:
    with (
        ClientTracker(**tracker_config("http://127.0.0.1:9", tmp_path)) as t,
        pytest.raises(ValueError, match="field 'event': the event is 10000000 bytes"),
    ):
        t.track_event("x" * 10_000_000)


class _BadMapping(HamustroHandler):
    def map_record(self, record: logging.LogRecord) -> Any:
        raise _Unprintable  # an override whose error cannot even be printed


def test_an_unprintable_error_from_a_map_record_override_never_reaches_the_app(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    handler = _BadMapping(**tracker_config("http://127.0.0.1:9", tmp_path))
    log = logging.getLogger("edges.bad-mapping")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("x", extra={"event": "e"})  # must not raise
        stats = handler.stats()
    finally:
        log.removeHandler(handler)
        handler.close()
    assert stats["dropped"] == {"error": 1}
    assert "_Unprintable (its message cannot be shown)" in capfd.readouterr().err
