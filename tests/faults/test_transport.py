"""What one request may do: never follow a redirect, never read a body, never outlast its bound.

Each case was found against a real collector or link (issues 9 and 10): a
redirect followed as a GET deleted undelivered events, a 200 body trickled
at 1 byte/s held the send thread, a 300 MB body went into the application's
memory, a slow uplink stretched one request past its lease. Real HTTP on
loopback to the development collector, which injects each fault; nothing
here is mocked. Timings are asserted only as generous upper bounds that
prove "bounded" (a 60 s trickle must not take 10 s).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from hamustro_logging import ClientTracker
from hamustro_logging.collector import TRACK_PATH, DevCollector
from hamustro_logging.mapping import build_event
from hamustro_logging.retry import Backoff, explain
from hamustro_logging.transport import Answer, Transport
from hamustro_logging.wire import collection_header, encode_payload, sha256hex

from ..support import SESSION, TEST_SECRET, dead_url, tracker_config


def collection(n: int = 1) -> bytes:
    """A valid collection of ``n`` events for the tests' identity."""
    header = collection_header(sha256hex("device-1"), "client-1", SESSION, "OS X 10.11", "1.0.0")
    event = build_event("transport.e", at=time.time())
    return header + b"".join(encode_payload(event, nr) for nr in range(1, n + 1))


def resident_bytes() -> int:
    """This process's resident set size (``/proc/self/statm``, Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


@contextlib.contextmanager
def peak_growth() -> Iterator[list[int]]:
    """The most the resident set grew above its size at entry, sampled every 5 ms.

    Sampled, not read once at the end: a body read and freed again leaves
    no trace in the RSS afterwards (large blocks go back to the system).
    """
    before = resident_bytes()
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], resident_bytes() - before)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()
        peak[0] = max(peak[0], resident_bytes() - before)


@contextlib.contextmanager
def anything_answers_200() -> Iterator[tuple[str, list[str]]]:
    """A loopback server that answers 200 to every request; yields its URL and the methods seen.

    What a redirect might point at: a web page, a load balancer's health check.
    """
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _ok(self) -> None:
            seen.append(self.command)
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_GET = do_POST = do_HEAD = _ok

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}{TRACK_PATH}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# -- redirects are answers, never deliveries -----------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_an_answer_with_its_location(collector: DevCollector, status: int) -> None:
    # The target is a loopback port nobody listens on: following it could only fail.
    target = dead_url().replace("http://", "http://user:hunter2@") + TRACK_PATH
    collector.redirect_next(1, status, location=target)
    transport = Transport(collector.url, TEST_SECRET, timeout=(2, 5))
    try:
        answer = transport.post(collection())
    finally:
        transport.close()
    assert answer.status == status
    assert answer.location == target.replace("user:hunter2@", "***@")
    message = explain(answer)
    assert answer.location in message
    assert "collector_url" in message
    assert "hunter2" not in message
    assert "secret" not in message  # a collector that moved is no wrong secret
    assert collector.events() == []


def test_a_redirect_to_a_get_that_answers_200_keeps_the_events(
    collector: DevCollector, tmp_path: Path
) -> None:
    # requests repeats a POST answered 301/302/303 as a GET; a 200 to that
    # GET once counted the batch as delivered and deleted it.
    with anything_answers_200() as (elsewhere, seen):
        collector.redirect_next(1, 303, location=elsewhere)
        with ClientTracker(**tracker_config(collector, tmp_path / "q", queue_size=1000)) as t:
            for i in range(50):
                t.track_event("e", user_id=i)
            assert t.flush(timeout=5) is False
            stats = t.stats()
            assert stats["pending"] == 50
            assert stats["sent"] == 0
            assert elsewhere in stats["last_error"]
            assert seen == []  # nothing was sent where the redirect pointed
            assert collector.events() == []
            assert t.flush(timeout=10) is True  # the next attempt goes to collector_url again
    assert len(collector.events()) == 50


def test_a_redirect_backs_off_at_the_cap() -> None:
    # Only a configuration change helps, as with a wrong secret (405).
    backoff = Backoff(base=1.0, cap=300.0)
    assert backoff.next_delay(Answer(301, location="http://127.0.0.1:1/api/v1/track")) >= 150.0


# -- a slow uplink: the request has a total bound --------------------------------------


def test_a_slow_upload_ends_within_max_duration(collector: DevCollector) -> None:
    # On loopback the kernel takes megabytes into its buffers at once and
    # wakes a blocked writer only when a third of its buffer has drained, so
    # a steady slow reader is modelled with a body far larger than those
    # buffers and a rate at which the writer wakes about once a second (as
    # it does all the time on a real slow link with small buffers).
    collector.read_rate(400_000)
    transport = Transport(collector.url, TEST_SECRET, timeout=(3, 5), request_timeout=2.0)
    body = collection() + b"\0" * (16 << 20)  # 16 MiB: 40 s at that rate
    started = time.monotonic()
    try:
        answer = transport.post(body)
    finally:
        transport.close()
    took = time.monotonic() - started
    assert transport.max_duration == 4.0  # 2 s, plus one block's write (the connect timeout)
    assert took < transport.max_duration + 1.0
    assert answer.status is None
    assert answer.sent is False  # the collector cannot store a body it did not get whole
    assert answer.error is not None and "upload" in answer.error
    assert "is the collector running" not in explain(answer)
    assert collector.events() == []


def test_a_deadline_shortens_the_request(collector: DevCollector) -> None:
    collector.read_rate(400_000)
    transport = Transport(collector.url, TEST_SECRET, timeout=(3, 5), request_timeout=30.0)
    started = time.monotonic()
    try:
        answer = transport.post(collection() + b"\0" * (16 << 20), deadline=started + 1.0)
    finally:
        transport.close()
    assert time.monotonic() - started < 1.0 + 1.0 + 1.0  # the deadline, one block, slack
    assert answer.sent is False


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf")])
def test_request_timeout_must_be_a_positive_number(value: float) -> None:
    with pytest.raises(ValueError, match="request_timeout"):
        Transport("http://127.0.0.1:1", TEST_SECRET, request_timeout=value)


# -- response bodies are never read ------------------------------------------------------


def test_a_trickled_200_body_returns_at_once_and_counts_as_delivered(
    collector: DevCollector, tmp_path: Path
) -> None:
    collector.trickle_next(1, body_bytes=60, seconds_per_byte=1.0)  # 60 s of body
    with ClientTracker(**tracker_config(collector, tmp_path / "q", queue_size=1000)) as t:
        for i in range(5):
            t.track_event("e", user_id=i)
        started = time.monotonic()
        assert t.flush(timeout=30) is True
        assert time.monotonic() - started < 10.0
        assert t.stats()["pending"] == 0
    assert len(collector.events()) == 5


def test_a_huge_200_body_is_not_read_into_memory(collector: DevCollector, tmp_path: Path) -> None:
    size = 300 << 20
    collector.big_body_next(1, size=size)
    with ClientTracker(**tracker_config(collector, tmp_path / "q", queue_size=1000)) as t:
        for i in range(5):
            t.track_event("e", user_id=i)
        started = time.monotonic()
        with peak_growth() as grown:
            assert t.flush(timeout=30) is True
        assert time.monotonic() - started < 10.0
        assert grown[0] < size // 4, f"RSS grew by {grown[0] >> 20} MiB"
    assert len(collector.events()) == 5


# -- 413: the body is too large for something on the way ---------------------------------


def test_413_is_split_and_explained(collector: DevCollector) -> None:
    from hamustro_logging.retry import Action, decide

    body = collection(200)
    collector.max_body = len(body) - 1  # a proxy's limit, just under this request
    transport = Transport(collector.url, TEST_SECRET, timeout=(2, 5))
    try:
        too_large = transport.post(body)
        half = transport.post(collection(100))
    finally:
        transport.close()
    assert too_large.status == 413
    assert decide(too_large) is Action.SPLIT
    assert explain(too_large) == (
        "413: the request body is too large for the collector or a proxy in front of it"
    )
    assert half.status == 200 and decide(half) is Action.DELIVERED
    assert len(collector.events()) == 100


# -- an answer cut off is not a dead collector -------------------------------------------


def test_an_answer_cut_off_is_not_reported_as_a_dead_collector(collector: DevCollector) -> None:
    collector.accept_then_drop_next(1)  # stores the batch, then closes without a word
    transport = Transport(collector.url, TEST_SECRET, timeout=(2, 5))
    try:
        answer = transport.post(collection())
    finally:
        transport.close()
    assert answer.status is None
    assert answer.sent is True  # it was stored: a resend is a possible duplicate
    message = explain(answer)
    assert "is the collector running" not in message
    assert "after the request was sent" in message
    assert len(collector.events()) == 1

    refused = Transport(dead_url(), TEST_SECRET, timeout=(2, 5))  # that hint stays where it helps
    try:
        answer = refused.post(collection())
    finally:
        refused.close()
    assert answer.sent is False
    assert explain(answer) == "connection refused; is the collector running at that URL?"


def test_request_timeout_is_a_tracker_option(
    collector: DevCollector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tracker_config(collector, tmp_path / "q", timeout=(1, 5))
    with ClientTracker(**config, request_timeout=4) as t:
        assert t.transport.max_duration == 5.0
    monkeypatch.setenv("HAMUSTRO_REQUEST_TIMEOUT", "2.5")
    with ClientTracker(**config) as t:
        assert t.transport.max_duration == 3.5
