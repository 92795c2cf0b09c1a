"""The development collector, over real HTTP on loopback."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from hamustro_logging import payload_pb2, wire
from hamustro_logging.collector import TRACK_PATH, DevCollector

VECTOR_HEX = (
    "0a40303332303464653932653131666338633532383133396265343139303635393230656238336462666631"
    "613436363362626561343535616136653937303262641208636c69656e742d311a2063336232363139383964"
    "6639636239356566623739313735396464333765313622" + "0a4f5320582031302e31312a05312e302e304232"
    "08a8bfc8b50512074576656e742e31180120072a0b3230332e302e3131332e37320e7b22706c616e223a2270"
    "726f227d3801"
)
VECTOR_TIME = "1454514088"
VECTOR_SECRET = "ultrasafesecret"  # noqa: S105 -- the published test vector's secret
VECTOR_SIGNATURE = "tKrfo9YBbqqMhsV5ofw21ji4ZamplA7AW5IWtI2/UH8="

DEVICE_ID = wire.sha256hex("device-1")
SESSION = wire.session_id(DEVICE_ID, "client-1", "OS X 10.11", "1.0.0")
HEADER = wire.collection_header(DEVICE_ID, "client-1", SESSION, "OS X 10.11", "1.0.0")
PROTOBUF = "application/protobuf"

EXPECTED_VECTOR_EVENT = {
    "session": "c3b261989df9cb95efb791759dd37e16",
    "device_id": DEVICE_ID,
    "client_id": "client-1",
    "system_version": "OS X 10.11",
    "product_version": "1.0.0",
    "system": None,
    "product_git_hash": None,
    "at": 1454514088,
    "at_utc": "2016-02-03 15:41:28",
    "event": "Event.1",
    "nr": 1,
    "user_id": 7,
    "ip": "203.0.113.7",
    "parameters": '{"plan":"pro"}',
    "is_testing": True,
}


def vector_body() -> bytes:
    event = wire.Event(1454514088, b"Event.1", 7, b"203.0.113.7", b'{"plan":"pro"}', True)
    return HEADER + wire.encode_payload(event, 1)


def body_with(*events: wire.Event) -> bytes:
    return HEADER + b"".join(wire.encode_payload(e, nr) for nr, e in enumerate(events, 1))


def signed_headers(
    body: bytes, secret: str, content_type: str | None = PROTOBUF, at: str = VECTOR_TIME
) -> dict[str, str]:
    headers = {"X-Hamustro-Time": at, "X-Hamustro-Signature": wire.signature(at, body, secret)}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return headers


def post(
    collector: DevCollector,
    body: bytes,
    headers: dict[str, str],
    timeout: float = 10.0,
) -> requests.Response:
    return requests.post(collector.url + TRACK_PATH, data=body, headers=headers, timeout=timeout)


def post_signed(collector: DevCollector, body: bytes, secret: str, **kw: Any) -> requests.Response:
    return post(collector, body, signed_headers(body, secret), **kw)


@pytest.fixture
def verbose_collector(secret: str) -> Iterator[DevCollector]:
    with DevCollector(secret=secret, output=io.StringIO(), verbose=True) as running:
        yield running


# -- the known answers ---------------------------------------------------------


def test_wire_helpers_build_the_vector_bytes_and_signature() -> None:
    body = vector_body()
    assert body.hex() == VECTOR_HEX
    assert wire.md5hex(body) == "93284c65a371241c84a225a9550f3e9d"
    assert wire.signature(VECTOR_TIME, body, VECTOR_SECRET) == VECTOR_SIGNATURE


def test_vector_is_accepted_and_printed_as_one_json_line() -> None:
    output = io.StringIO()
    with DevCollector(secret=VECTOR_SECRET, output=output) as collector:
        headers = {
            "X-Hamustro-Time": VECTOR_TIME,
            "X-Hamustro-Signature": VECTOR_SIGNATURE,
            "Content-Type": PROTOBUF,
        }
        response = post(collector, bytes.fromhex(VECTOR_HEX), headers)
        assert response.status_code == 200
        assert response.content == b""
        assert collector.events() == [EXPECTED_VECTOR_EVENT]
        assert collector.answered() == {200: 1}
    lines = output.getvalue().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == EXPECTED_VECTOR_EVENT
    assert ", " not in lines[0]  # compact separators


def test_optional_collection_fields_and_missing_optionals(
    collector: DevCollector, secret: str
) -> None:
    header = wire.collection_header(
        DEVICE_ID, "client-1", SESSION, "OS X 10.11", "1.0.0", "darwin", "abc123"
    )
    body = header + wire.encode_payload(wire.Event(1454514088, b"bare"), 5)
    assert post_signed(collector, body, secret).status_code == 200
    (event,) = collector.events()
    assert event["system"] == "darwin"
    assert event["product_git_hash"] == "abc123"
    assert event["user_id"] is None
    assert event["parameters"] is None
    assert event["ip"] == ""
    assert event["is_testing"] is False
    assert event["nr"] == 5


def test_user_id_zero_is_kept_apart_from_unset(collector: DevCollector, secret: str) -> None:
    body = body_with(wire.Event(1454514088, b"zero", user_id=0))
    assert post_signed(collector, body, secret).status_code == 200
    assert collector.events()[0]["user_id"] == 0


def test_several_payloads_in_one_request(collector: DevCollector, secret: str) -> None:
    body = body_with(*(wire.Event(1454514088 + i, f"e{i}".encode()) for i in range(50)))
    assert post_signed(collector, body, secret).status_code == 200
    events = collector.wait_for(50, timeout=1)
    assert [e["nr"] for e in events] == list(range(1, 51))
    assert events[-1]["at_utc"] == "2016-02-03 15:42:17"


# -- the checks, in the collector's order ---------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_get_405(collector: DevCollector, method: str) -> None:
    response = requests.request(method, collector.url + TRACK_PATH, timeout=10)
    assert response.status_code == 405


def test_other_paths_get_404(collector: DevCollector, secret: str) -> None:
    body = vector_body()
    response = requests.post(
        collector.url + "/api/v1/other", data=body, headers=signed_headers(body, secret), timeout=10
    )
    assert response.status_code == 404
    assert collector.events() == []


def _drop(headers: dict[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k != name}


def _missing_nr() -> bytes:
    collection = payload_pb2.Collection(
        device_id=DEVICE_ID,
        client_id="client-1",
        session=SESSION,
        system_version="OS X 10.11",
        product_version="1.0.0",
    )
    collection.payloads.add(at=1454514088, event="no-nr")
    return collection.SerializePartialToString()


def _missing_client_id() -> bytes:
    collection = payload_pb2.Collection(
        device_id=DEVICE_ID, session=SESSION, system_version="OS X 10.11", product_version="1.0.0"
    )
    collection.payloads.add(at=1454514088, event="e", nr=1)
    return collection.SerializePartialToString()


def _wrong_session() -> bytes:
    header = wire.collection_header(DEVICE_ID, "client-2", SESSION, "OS X 10.11", "1.0.0")
    return header + wire.encode_payload(wire.Event(1454514088, b"e"), 1)


def _case(name: str, secret: str) -> tuple[bytes, dict[str, str]]:
    body = vector_body()
    good = signed_headers(body, secret)
    if name == "missing time":
        return body, _drop(good, "X-Hamustro-Time")
    if name == "missing signature":
        return body, _drop(good, "X-Hamustro-Signature")
    if name == "wrong secret":
        return body, signed_headers(body, "not-the-secret")
    if name == "signature of another time":
        return body, {**good, "X-Hamustro-Time": "1454514089"}
    if name == "signature of another body":
        return body + b"\x00", good
    if name == "missing content type":
        return body, signed_headers(body, secret, content_type=None)
    if name == "json content type":
        return body, signed_headers(body, secret, content_type="application/json")
    if name == "garbage body":
        garbage = b"\xff\xff\xff not protobuf"
        return garbage, signed_headers(garbage, secret)
    if name == "missing payload field":
        partial = _missing_nr()
        return partial, signed_headers(partial, secret)
    if name == "missing collection field":
        partial = _missing_client_id()
        return partial, signed_headers(partial, secret)
    if name == "wrong session":
        wrong = _wrong_session()
        return wrong, signed_headers(wrong, secret)
    raise AssertionError(name)


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("missing time", 405),
        ("missing signature", 405),
        ("wrong secret", 405),
        ("signature of another time", 405),
        ("signature of another body", 405),
        ("missing content type", 400),
        ("json content type", 400),
        ("garbage body", 400),
        ("missing payload field", 400),
        ("missing collection field", 400),
        ("wrong session", 400),
    ],
)
def test_each_check_answers_its_documented_code(
    collector: DevCollector, secret: str, case: str, status: int
) -> None:
    body, headers = _case(case, secret)
    response = post(collector, body, headers)
    assert response.status_code == status
    assert response.content == b""  # not verbose: no body
    assert collector.events() == []
    assert collector.answered() == {status: 1}


def test_content_type_parameters_are_allowed(collector: DevCollector, secret: str) -> None:
    body = vector_body()
    for content_type in ("application/protobuf; charset=utf-8", "Application/Protobuf"):
        response = post(collector, body, signed_headers(body, secret, content_type=content_type))
        assert response.status_code == 200, content_type
    assert len(collector.events()) == 2


def test_no_payloads_is_204_and_stores_nothing(secret: str) -> None:
    output = io.StringIO()
    with DevCollector(secret=secret, output=output) as collector:
        response = post_signed(collector, HEADER, secret)
        assert response.status_code == 204
        assert collector.events() == []
        assert collector.answered() == {204: 1}
    assert output.getvalue() == ""


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("missing time", "X-Hamustro-Time header is missing"),
        ("missing signature", "X-Hamustro-Signature header is missing"),
        ("wrong secret", "X-Hamustro-Signature header is invalid"),
        ("json content type", "Unsupported or missing Content-Type"),
        ("garbage body", "Unmarshaling protobuf is failed"),
        ("missing payload field", "payloads[0].nr"),
        ("wrong session", "Collection's session attribute is invalid"),
    ],
)
def test_verbose_mode_explains_errors_in_json(
    verbose_collector: DevCollector, secret: str, case: str, error: str
) -> None:
    body, headers = _case(case, secret)
    response = post(verbose_collector, body, headers)
    assert response.status_code in (400, 405)
    assert response.headers["Content-Type"] == "application/json"
    assert error in response.json()["error"]


def test_checks_run_in_order(verbose_collector: DevCollector, secret: str) -> None:
    # A body failing several checks is refused by the first one in the table.
    garbage = b"\xff\xff\xff"
    wrong_secret = signed_headers(garbage, "nope", content_type="text/plain")
    response = post(verbose_collector, garbage, wrong_secret)
    assert (response.status_code, response.json()["error"]) == (
        405,
        "X-Hamustro-Signature header is invalid",
    )
    wrong_type = signed_headers(garbage, secret, content_type="text/plain")
    response = post(verbose_collector, garbage, wrong_type)
    assert (response.status_code, response.json()["error"]) == (
        400,
        "Unsupported or missing Content-Type",
    )
    response = requests.get(verbose_collector.url + TRACK_PATH, headers=wrong_type, timeout=10)
    assert (response.status_code, response.json()["error"]) == (405, "Sending method is not POST")


def test_verbose_success_has_an_empty_body(verbose_collector: DevCollector, secret: str) -> None:
    response = post_signed(verbose_collector, vector_body(), secret)
    assert response.status_code == 200
    assert response.content == b""


# -- ip fill ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "ip"),
    [
        ({"X-Forwarded-For": "10.0.0.1, 8.8.8.8, 1.1.1.1"}, "8.8.8.8"),
        (
            {"X-Forwarded-For": "192.168.1.2, ::1, 2001:4860::8888", "X-Real-Ip": "1.1.1.1"},
            "1.1.1.1",
        ),
        ({"X-Forwarded-For": "10.0.0.1, 127.0.0.1, 192.0.2.7"}, ""),
        ({}, ""),
    ],
)
def test_empty_ip_is_filled_from_forwarding_headers(
    collector: DevCollector, secret: str, extra: dict[str, str], ip: str
) -> None:
    body = body_with(wire.Event(1454514088, b"no-ip"), wire.Event(1454514088, b"ip", ip=b"9.9.9.9"))
    response = post(collector, body, {**signed_headers(body, secret), **extra})
    assert response.status_code == 200
    assert [e["ip"] for e in collector.events()] == [ip, "9.9.9.9"]


# -- fault injection -------------------------------------------------------------------


def test_fail_next_answers_the_status_with_retry_after(
    collector: DevCollector, secret: str
) -> None:
    collector.fail_next(status=500, retry_after="3")
    first = post_signed(collector, vector_body(), secret)
    assert first.status_code == 500
    assert first.headers["Retry-After"] == "3"
    assert collector.events() == []
    second = post_signed(collector, vector_body(), secret)
    assert second.status_code == 200
    assert "Retry-After" not in second.headers
    assert len(collector.events()) == 1
    assert collector.answered() == {500: 1, 200: 1}


def test_faults_are_consumed_in_order_by_track_posts_only(
    collector: DevCollector, secret: str
) -> None:
    collector.fail_next(2, status=503)
    collector.fail_next(1, status=429, retry_after="7")
    assert requests.get(collector.url + TRACK_PATH, timeout=10).status_code == 405
    codes = [post_signed(collector, vector_body(), secret).status_code for _ in range(4)]
    assert codes == [503, 503, 429, 200]


def test_drop_next_closes_without_an_answer(collector: DevCollector, secret: str) -> None:
    collector.drop_next()
    with pytest.raises(requests.ConnectionError):
        post_signed(collector, vector_body(), secret)
    assert collector.events() == []
    assert post_signed(collector, vector_body(), secret).status_code == 200
    assert collector.answered() == {200: 1}


def test_accept_then_drop_stores_but_never_answers(collector: DevCollector, secret: str) -> None:
    collector.accept_then_drop_next()
    with pytest.raises(requests.ConnectionError):
        post_signed(collector, vector_body(), secret)
    assert collector.events() == [EXPECTED_VECTOR_EVENT]
    assert collector.answered() == {}


def test_hang_next_times_out_the_client_then_stores(collector: DevCollector, secret: str) -> None:
    collector.hang_next(seconds=1.0)
    with pytest.raises(requests.Timeout):
        post_signed(collector, vector_body(), secret, timeout=0.2)
    # The collector still answers normally once the hang is over: stored, though
    # the client never saw the 200 (the duplicate-on-retry case).
    assert len(collector.wait_for(1, timeout=10)) == 1


def test_set_delay_slows_every_answer(collector: DevCollector, secret: str) -> None:
    collector.set_delay(2.0)
    with pytest.raises(requests.Timeout):
        requests.get(collector.url + TRACK_PATH, timeout=0.2)
    collector.set_delay(0)
    assert post_signed(collector, vector_body(), secret, timeout=1.5).status_code == 200


def test_stop_wakes_a_hanging_request_with_503(secret: str) -> None:
    collector = DevCollector(secret=secret, output=io.StringIO()).start()
    collector.hang_next(seconds=30)
    statuses: list[int] = []

    def send() -> None:
        statuses.append(post_signed(collector, vector_body(), secret).status_code)

    sender = threading.Thread(target=send)
    sender.start()
    deadline = time.monotonic() + 10
    while collector._busy == 0 and time.monotonic() < deadline:  # the request is in
        time.sleep(0.01)
    started = time.monotonic()
    collector.stop()
    sender.join(timeout=10)
    assert statuses == [503]
    assert time.monotonic() - started < 5
    assert collector.events() == []


# -- life cycle ---------------------------------------------------------------------


def test_keep_alive_reuses_one_connection(collector: DevCollector, secret: str) -> None:
    body = vector_body()
    port = int(collector.url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        sockets = set()
        statuses = []
        for _ in range(3):
            connection.request("POST", TRACK_PATH, body=body, headers=signed_headers(body, secret))
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
            sockets.add(id(connection.sock))
        # Errors answer on the same connection too.
        connection.request("GET", TRACK_PATH)
        response = connection.getresponse()
        response.read()
        statuses.append(response.status)
        sockets.add(id(connection.sock))
    finally:
        connection.close()
    assert statuses == [200, 200, 200, 405]
    assert len(sockets) == 1


def test_chunked_body_is_read_whole(collector: DevCollector, secret: str) -> None:
    body = vector_body()
    response = requests.post(
        collector.url + TRACK_PATH,
        data=iter([body[:10], body[10:]]),
        headers=signed_headers(body, secret),
        timeout=10,
    )
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.status_code == 200
    assert collector.events() == [EXPECTED_VECTOR_EVENT]


def test_wait_for_times_out_with_a_clear_message(collector: DevCollector) -> None:
    with pytest.raises(AssertionError, match=r"expected at least 1 accepted events, got 0"):
        collector.wait_for(1, timeout=0.1)


def test_keep_events_false_still_counts_for_wait_for(secret: str) -> None:
    output = io.StringIO()
    with DevCollector(secret=secret, output=output, keep_events=False) as collector:
        assert post_signed(collector, vector_body(), secret).status_code == 200
        assert collector.wait_for(1, timeout=1) == []
    assert json.loads(output.getvalue()) == EXPECTED_VECTOR_EVENT


def test_stop_is_idempotent_and_the_port_goes_dead(secret: str) -> None:
    collector = DevCollector(secret=secret, output=io.StringIO()).start()
    url = collector.url
    session = requests.Session()
    assert session.post(
        url + TRACK_PATH, data=vector_body(), headers=signed_headers(vector_body(), secret)
    ).ok
    collector.stop()
    collector.stop()
    # Even the pooled keep-alive connection is gone: the client sees a dead collector.
    with pytest.raises(requests.ConnectionError):
        session.post(url + TRACK_PATH, data=b"", timeout=5)
    with pytest.raises(AssertionError, match="stopped"):
        collector.wait_for(5)
    with pytest.raises(RuntimeError):
        collector.start()


def test_url_needs_start(secret: str) -> None:
    collector = DevCollector(secret=secret)
    with pytest.raises(RuntimeError):
        _ = collector.url
    collector.stop()  # never started: nothing to do, no error


# -- the command line -----------------------------------------------------------------


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_command_line_collector_runs_until_signalled(tmp_path: Path, stop_signal: int) -> None:
    events_file = tmp_path / "events.jsonl"
    command = [
        sys.executable,
        "-m",
        "hamustro_logging.collector",
        "--port",
        "0",
        "--output",
        str(events_file),
    ]
    env = {
        **os.environ,
        "HAMUSTRO_SHARED_SECRET_KEY": VECTOR_SECRET,  # the default for --secret
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=env
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline().decode()
        match = re.fullmatch(
            r"hamustro dev collector listening on http://127\.0\.0\.1:(\d+)/api/v1/track\n", line
        )
        assert match, line
        url = f"http://127.0.0.1:{match[1]}{TRACK_PATH}"
        headers = {
            "X-Hamustro-Time": VECTOR_TIME,
            "X-Hamustro-Signature": VECTOR_SIGNATURE,
            "Content-Type": PROTOBUF,
        }
        response = requests.post(url, data=bytes.fromhex(VECTOR_HEX), headers=headers, timeout=10)
        assert response.status_code == 200
        assert json.loads(events_file.read_text()) == EXPECTED_VECTOR_EVENT
        process.send_signal(stop_signal)
        stdout, stderr = process.communicate(timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert stdout == b""  # events went to the file, nothing else is printed
    assert VECTOR_SECRET.encode() not in line.encode() + stderr
    assert list(tmp_path.iterdir()) == [events_file]
