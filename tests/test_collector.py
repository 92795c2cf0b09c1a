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

from hamustro_logging import payload_pb2, payload_v2_pb2, wire
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


# -- schema 2 -------------------------------------------------------------------------

V2_VECTOR_HEX = (
    "0a40303332303464653932653131666338633532383133396265343139303635393230656238336462666631"
    "613436363362626561343535616136653937303262641208636c69656e742d311a2033303562386531396234"
    "6662316334326234616466666161333733616130343622" + "0a4f5320582031302e31312a05312e302e3030"
    "047a5508a8bfc8b50512074576656e742e31180122062b30313a30302a0874656e616e742d31320675736572"
    "2d373a0b3230332e302e3131332e37420248554a0b0a04706c616e120370726f4a0a0a057365617473120133"
)
V2_SIGNATURE = "Fa5WSwJ7yry7g0S8ChawQhVfb+R2xlKfBSSZD9P+H0Y="
BETA = wire.ENVIRONMENTS["BETA"]
V2_SESSION = wire.session_id_v2(DEVICE_ID, "client-1", "OS X 10.11", "1.0.0", BETA)
V2_HEADER = wire.collection_header_v2(
    DEVICE_ID, "client-1", V2_SESSION, "OS X 10.11", "1.0.0", BETA
)
JSON = "application/json"

EXPECTED_V2_EVENT = {
    "session": "305b8e19b4fb1c42b4adffaa373aa046",
    "device_id": DEVICE_ID,
    "client_id": "client-1",
    "system_version": "OS X 10.11",
    "product_version": "1.0.0",
    "env": "BETA",
    "device_make": None,
    "device_model": None,
    "system": None,
    "system_language": None,
    "browser": None,
    "browser_version": None,
    "product_git_hash": None,
    "product_language": None,
    "at": 1454514088,
    "at_utc": "2016-02-03 15:41:28",
    "event": "Event.1",
    "nr": 1,
    "timezone": "+01:00",
    "tenant_id": "tenant-1",
    "user_id": "user-7",
    "ip": "203.0.113.7",
    "country": "HU",
    "parameters": '{"plan":"pro","seats":"3"}',
}


def v2_body(*events: wire.Event2, header: bytes = V2_HEADER) -> bytes:
    return header + b"".join(wire.encode_payloads_v2(events, 1))


def v2_json(camel: bool = False, **fields: Any) -> dict[str, Any]:
    """The schema-2 vector as a JSON collection; ``fields`` replace or add top-level ones."""
    collection: dict[str, Any] = {
        "device_id": DEVICE_ID,
        "client_id": "client-1",
        "session": V2_SESSION,
        "system_version": "OS X 10.11",
        "product_version": "1.0.0",
        "env": "BETA",
        "payloads": [
            {
                "at": 1454514088,
                "event": "Event.1",
                "nr": 1,
                "timezone": "+01:00",
                "tenant_id": "tenant-1",
                "user_id": "user-7",
                "ip": "203.0.113.7",
                "country": "HU",
                "parameters": [{"name": "plan", "value": "pro"}, {"name": "seats", "value": "3"}],
            }
        ],
    }
    collection.update(fields)
    if camel:
        collection = _camel(collection)
    return collection


def _camel(value: Any) -> Any:
    if isinstance(value, list):
        return [_camel(item) for item in value]
    if isinstance(value, dict):
        return {re.sub(r"_(\w)", lambda m: m[1].upper(), k): _camel(v) for k, v in value.items()}
    return value


def json_bytes(collection: Any) -> bytes:
    return json.dumps(collection).encode()


def post_v2(
    collector: DevCollector, body: bytes, secret: str, content_type: str = PROTOBUF, **kw: Any
) -> requests.Response:
    return post(collector, body, signed_headers(body, secret, content_type=content_type), **kw)


@pytest.fixture
def collector2(secret: str) -> Iterator[DevCollector]:
    with DevCollector(secret=secret, output=io.StringIO(), schema=2) as running:
        yield running


@pytest.fixture
def verbose_collector2(secret: str) -> Iterator[DevCollector]:
    with DevCollector(secret=secret, output=io.StringIO(), verbose=True, schema=2) as running:
        yield running


def test_v2_vector_is_accepted_and_printed_as_upstream_stores_it() -> None:
    output = io.StringIO()
    with DevCollector(secret=VECTOR_SECRET, output=output, schema=2) as collector:
        headers = {
            "X-Hamustro-Time": VECTOR_TIME,
            "X-Hamustro-Signature": V2_SIGNATURE,
            "Content-Type": PROTOBUF,
        }
        response = post(collector, bytes.fromhex(V2_VECTOR_HEX), headers)
        assert response.status_code == 200
        assert response.content == b""
        assert collector.events() == [EXPECTED_V2_EVENT]
        assert collector.answered() == {200: 1}
    (line,) = output.getvalue().splitlines()
    assert json.loads(line) == EXPECTED_V2_EVENT
    assert "is_testing" not in line
    assert ", " not in line


def test_v2_wire_helpers_build_the_vector() -> None:
    event = wire.Event2(
        1454514088, b"Event.1", b"+01:00", b"tenant-1", b"user-7", b"203.0.113.7", b"HU",
        wire.encode_parameters([(b"plan", b"pro"), (b"seats", b"3")]),
    )  # fmt: skip
    assert v2_body(event).hex() == V2_VECTOR_HEX


@pytest.mark.parametrize("camel", [False, True])
@pytest.mark.parametrize("env", ["BETA", 4])
def test_v2_json_bodies_in_snake_or_camel_case_env_by_name_or_number(
    collector2: DevCollector, secret: str, camel: bool, env: object
) -> None:
    body = json_bytes(v2_json(camel, env=env))
    assert (b"deviceId" in body) is camel
    response = post_v2(collector2, body, secret, content_type="application/json; charset=utf-8")
    assert response.status_code == 200
    assert collector2.events() == [EXPECTED_V2_EVENT]


def _v2_missing(field: str) -> bytes:
    collection = payload_v2_pb2.Collection.FromString(bytes.fromhex(V2_VECTOR_HEX))
    if field == "parameter value":
        collection.payloads[0].parameters[1].ClearField("value")
    elif field == "parameter name":
        collection.payloads[0].parameters[0].ClearField("name")
    elif field == "payload nr":
        collection.payloads[0].ClearField("nr")
    else:
        collection.ClearField(field)
    return collection.SerializePartialToString()


def _v2_case(name: str, secret: str) -> tuple[bytes, dict[str, str]]:
    body = bytes.fromhex(V2_VECTOR_HEX)
    good = signed_headers(body, secret)
    json_body: Any = None
    raw: bytes | None = None
    if name == "missing time":
        return body, _drop(good, "X-Hamustro-Time")
    if name == "missing signature":
        return body, _drop(good, "X-Hamustro-Signature")
    if name == "wrong secret":
        return body, signed_headers(body, "not-the-secret")
    if name == "signature of another body":
        return body + b"\x00", good
    if name == "missing content type":
        return body, signed_headers(body, secret, content_type=None)
    if name == "text content type":
        return body, signed_headers(body, secret, content_type="text/plain")
    if name.startswith("protobuf missing "):
        raw = _v2_missing(name.removeprefix("protobuf missing "))
    elif name == "garbage protobuf":
        raw = b"\xff\xff\xff not protobuf"
    elif name == "env the enum lacks":
        raw = bytes.fromhex(V2_VECTOR_HEX.replace("3004", "300c", 1))
    elif name == "schema 1 body":
        raw = vector_body()
    elif name == "session of the env's name":
        session = wire.md5hex(f"{DEVICE_ID}:client-1:OS X 10.11:1.0.0:BETA")
        raw = v2_body(wire.Event2(1, b"e"), header=_v2_header(session))
    elif name == "schema 1 session":
        raw = v2_body(wire.Event2(1, b"e"), header=_v2_header(SESSION))
    elif name == "json garbage":
        json_body = b"{not json"
    elif name == "json array":
        json_body = b"[]"
    elif name == "json unknown field":
        json_body = v2_json(is_testing=True)
    elif name == "json unknown payload field":
        collection = v2_json()
        collection["payloads"][0]["is_testing"] = True
        json_body = collection
    elif name == "json env in lower case":
        json_body = v2_json(env="beta")
    elif name == "json env the enum lacks":
        json_body = v2_json(env=12)
    elif name == "json missing env":
        collection = v2_json()
        del collection["env"]
        json_body = collection
    elif name == "json missing payload nr":
        collection = v2_json()
        del collection["payloads"][0]["nr"]
        json_body = collection
    elif name == "json wrong session":
        json_body = v2_json(session=SESSION)
    else:
        raise AssertionError(name)
    if json_body is not None:
        raw = json_body if isinstance(json_body, bytes) else json_bytes(json_body)
        return raw, signed_headers(raw, secret, content_type=JSON)
    assert raw is not None
    return raw, signed_headers(raw, secret)


def _v2_header(session: str) -> bytes:
    return wire.collection_header_v2(DEVICE_ID, "client-1", session, "OS X 10.11", "1.0.0", BETA)


V2_CASES = [
    ("missing time", 405, "X-Hamustro-Time header is missing"),
    ("missing signature", 405, "X-Hamustro-Signature header is missing"),
    ("wrong secret", 405, "X-Hamustro-Signature header is invalid"),
    ("signature of another body", 405, "X-Hamustro-Signature header is invalid"),
    ("missing content type", 400, "Unsupported or missing Content-Type"),
    ("text content type", 400, "Unsupported or missing Content-Type"),
    ("garbage protobuf", 400, "Unmarshaling protobuf is failed"),
    ("protobuf missing device_id", 400, "required field not set: device_id"),
    ("protobuf missing env", 400, "required field not set: env"),
    ("env the enum lacks", 400, "required field not set: env"),
    ("protobuf missing payload nr", 400, "required field not set: payloads[0].nr"),
    ("protobuf missing parameter value", 400, "payloads[0].parameters[1].value"),
    ("protobuf missing parameter name", 400, "payloads[0].parameters[0].name"),
    ("schema 1 body", 400, "Unmarshaling protobuf is failed"),
    ("session of the env's name", 400, "Collection's session attribute is invalid"),
    ("schema 1 session", 400, "Collection's session attribute is invalid"),
    ("json garbage", 400, "Unmarshaling json collection is failed"),
    ("json array", 400, "Unmarshaling json collection is failed"),
    ("json unknown field", 400, "is_testing"),
    ("json unknown payload field", 400, "is_testing"),
    ("json env in lower case", 400, "Unmarshaling json collection is failed"),
    ("json env the enum lacks", 400, "Unmarshaling json collection is failed"),
    ("json missing env", 400, "required field not set: env"),
    ("json missing payload nr", 400, "required field not set: payloads[0].nr"),
    ("json wrong session", 400, "Collection's session attribute is invalid"),
]


@pytest.mark.parametrize(("case", "status"), [(c, s) for c, s, _ in V2_CASES])
def test_v2_each_check_answers_its_documented_code(
    collector2: DevCollector, secret: str, case: str, status: int
) -> None:
    body, headers = _v2_case(case, secret)
    response = post(collector2, body, headers)
    assert response.status_code == status
    assert response.content == b""  # not verbose: no body
    assert collector2.events() == []
    assert collector2.answered() == {status: 1}


@pytest.mark.parametrize(("case", "error"), [(c, e) for c, _, e in V2_CASES])
def test_v2_verbose_mode_explains_errors_in_json(
    verbose_collector2: DevCollector, secret: str, case: str, error: str
) -> None:
    body, headers = _v2_case(case, secret)
    response = post(verbose_collector2, body, headers)
    assert response.headers["Content-Type"] == "application/json"
    assert error in response.json()["error"]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_v2_other_methods_get_405(collector2: DevCollector, method: str, secret: str) -> None:
    body = bytes.fromhex(V2_VECTOR_HEX)
    response = requests.request(
        method,
        collector2.url + TRACK_PATH,
        data=body,
        headers=signed_headers(body, secret),
        timeout=10,
    )
    assert response.status_code == 405
    assert collector2.events() == []


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
def test_v2_no_payloads_is_204_in_either_encoding(secret: str, content_type: str) -> None:
    output = io.StringIO()
    body = V2_HEADER if content_type == PROTOBUF else json_bytes(v2_json(payloads=[]))
    with DevCollector(secret=secret, output=output, schema=2) as collector:
        assert post_v2(collector, body, secret, content_type).status_code == 204
        assert collector.answered() == {204: 1}
        assert collector.events() == []
    assert output.getvalue() == ""


@pytest.mark.parametrize(
    "content_type",
    [PROTOBUF, "Application/Protobuf", "application/protobuf; charset=utf-8", JSON,
     "APPLICATION/JSON", "application/json;charset=UTF-8"],
)  # fmt: skip
def test_v2_content_type_is_a_media_type(
    collector2: DevCollector, secret: str, content_type: str
) -> None:
    is_json = "json" in content_type.lower()
    body = json_bytes(v2_json()) if is_json else bytes.fromhex(V2_VECTOR_HEX)
    assert post_v2(collector2, body, secret, content_type).status_code == 200
    assert collector2.events() == [EXPECTED_V2_EVENT]


def test_v2_checks_run_in_order(verbose_collector2: DevCollector, secret: str) -> None:
    """A body failing several checks is refused by the first one in collector.md's table."""

    def answer(body: bytes, headers: dict[str, str], method: str = "POST") -> tuple[int, str]:
        url = verbose_collector2.url + TRACK_PATH
        response = requests.request(method, url, data=body, headers=headers, timeout=10)
        return response.status_code, response.json()["error"]

    garbage = b"\xff\xff\xff"
    bad_everything = signed_headers(garbage, "nope", content_type="text/plain")
    assert answer(garbage, bad_everything, "GET") == (405, "Sending method is not POST")
    assert answer(garbage, _drop(bad_everything, "X-Hamustro-Time")) == (
        405,
        "X-Hamustro-Time header is missing",
    )
    assert answer(garbage, bad_everything) == (405, "X-Hamustro-Signature header is invalid")
    wrong_type = signed_headers(garbage, secret, content_type="text/plain")
    assert answer(garbage, wrong_type) == (400, "Unsupported or missing Content-Type")
    # Missing required fields come before the session, the session before "no payloads".
    partial = _v2_missing("device_id")
    status, error = answer(partial, signed_headers(partial, secret))
    assert (status, error.startswith("Unmarshaling protobuf is failed")) == (400, True)
    empty_wrong_session = _v2_header(SESSION)
    assert answer(empty_wrong_session, signed_headers(empty_wrong_session, secret)) == (
        400,
        "Collection's session attribute is invalid",
    )
    # A JSON parameter without a value (which drops the connection) after a wrong session.
    collection = v2_json(session=SESSION)
    collection["payloads"][0]["parameters"] = [{"name": "plan"}]
    body = json_bytes(collection)
    assert answer(body, signed_headers(body, secret, content_type=JSON)) == (
        400,
        "Collection's session attribute is invalid",
    )


def test_v2_503_while_stopping_comes_before_everything(secret: str) -> None:
    collector = DevCollector(secret=secret, output=io.StringIO(), schema=2).start()
    collector.set_delay(30)  # every request waits; stop() wakes them
    statuses: list[int] = []
    body = bytes.fromhex(V2_VECTOR_HEX)

    def send(method: str, headers: dict[str, str]) -> None:
        url = collector.url + TRACK_PATH
        response = requests.request(method, url, data=body, headers=headers, timeout=10)
        statuses.append(response.status_code)

    senders = [
        threading.Thread(target=send, args=("POST", signed_headers(body, secret))),
        threading.Thread(target=send, args=("GET", {})),  # would be 405
        threading.Thread(target=send, args=("POST", {"Content-Type": JSON})),  # would be 405
    ]
    for sender in senders:
        sender.start()
    deadline = time.monotonic() + 10
    while collector._busy < len(senders) and time.monotonic() < deadline:
        time.sleep(0.01)
    collector.stop()
    for sender in senders:
        sender.join(timeout=10)
    assert statuses == [503, 503, 503]
    assert collector.events() == []


# -- schema 2: what is recorded ------------------------------------------------------------


def test_v2_records_every_collection_field_and_leaves_unset_ones_none(
    collector2: DevCollector, secret: str
) -> None:
    options = {
        "device_make": "Apple", "device_model": "MacBookPro11,1", "system": "darwin",
        "system_language": "hu_HU", "browser": "Safari", "browser_version": "9.0",
        "product_git_hash": "abc123", "product_language": "en",
    }  # fmt: skip
    env = wire.ENVIRONMENTS["DEVELOPMENT"]
    session = wire.session_id_v2(DEVICE_ID, "client-1", "OS X 10.11", "1.0.0", env)
    header = wire.collection_header_v2(
        DEVICE_ID, "client-1", session, "OS X 10.11", "1.0.0", env, **options
    )
    assert post_v2(collector2, v2_body(wire.Event2(1454514088, b"bare"), header=header), secret).ok
    (event,) = collector2.events()
    assert {k: event[k] for k in options} == options
    assert event["env"] == "DEVELOPMENT"
    assert event["session"] == "939a35fdf3559db729bc198f2babddc5"
    unset = ("timezone", "tenant_id", "user_id", "country")
    assert {k: event[k] for k in unset} == dict.fromkeys(unset)
    assert (event["ip"], event["parameters"]) == ("", "{}")
    assert "is_testing" not in event


@pytest.mark.parametrize(
    ("pairs", "stored"),
    [
        ([], "{}"),
        ([("plan", "pro"), ("seats", "3")], '{"plan":"pro","seats":"3"}'),
        # A Go map: keys sorted, a repeated name keeps its last value.
        ([("b", "1"), ("a", "2"), ("b", "3")], '{"a":"2","b":"3"}'),
        # encoding/json's escapes: HTML-safe, non-ASCII kept, control characters escaped.
        ([("k", '<a href="x">&</a>'), ("é", "ő\u2028\n")],
         '{"k":"\\u003ca href=\\"x\\"\\u003e\\u0026\\u003c/a\\u003e","é":"ő\\u2028\\n"}'),
        ([("", "")], '{"":""}'),
    ],
)  # fmt: skip
def test_v2_parameters_are_stored_as_one_json_object_string(
    collector2: DevCollector, secret: str, pairs: list[tuple[str, str]], stored: str
) -> None:
    params = wire.encode_parameters((n.encode(), v.encode()) for n, v in pairs)
    assert post_v2(collector2, v2_body(wire.Event2(1, b"e", params=params)), secret).ok
    (event,) = collector2.events()
    assert event["parameters"] == stored
    assert json.loads(stored) == dict(pairs)


def test_v2_user_and_tenant_ids_are_strings(collector2: DevCollector, secret: str) -> None:
    body = v2_body(
        wire.Event2(1, b"a", user_id=b"7", tenant_id=b"0"), wire.Event2(1, b"b", user_id=b"")
    )
    assert post_v2(collector2, body, secret).ok
    first, second = collector2.events()
    assert (first["user_id"], first["tenant_id"]) == ("7", "0")
    assert (second["user_id"], second["tenant_id"]) == ("", None)


def test_v2_empty_ip_is_filled_from_forwarding_headers(
    collector2: DevCollector, secret: str
) -> None:
    body = v2_body(wire.Event2(1, b"no-ip"), wire.Event2(1, b"ip", ip=b"9.9.9.9"))
    headers = {**signed_headers(body, secret), "X-Forwarded-For": "10.0.0.1, 8.8.8.8"}
    assert post(collector2, body, headers).status_code == 200
    assert [e["ip"] for e in collector2.events()] == ["8.8.8.8", "9.9.9.9"]


@pytest.mark.parametrize("missing", ["value", "name"])
def test_v2_json_parameter_without_both_drops_the_connection_after_the_payloads_before(
    collector2: DevCollector, secret: str, missing: str
) -> None:
    """As upstream's handler panics: the payloads before are queued, no answer at all."""
    collection = v2_json()
    first = collection["payloads"][0]
    broken = {**first, "nr": 2, "parameters": [{"name": "plan", "value": "pro"}]}
    del broken["parameters"][0][missing]
    collection["payloads"] = [first, broken, {**first, "nr": 3}]
    body = json_bytes(collection)
    with pytest.raises(requests.ConnectionError):
        post_v2(collector2, body, secret, JSON)
    assert collector2.events() == [EXPECTED_V2_EVENT]
    assert collector2.answered() == {}
    assert post_v2(collector2, json_bytes(v2_json()), secret, JSON).status_code == 200


def test_v2_json_strings_are_decoded_as_go_does(collector2: DevCollector, secret: str) -> None:
    """Invalid UTF-8 and lone surrogates become U+FFFD (the session is checked after)."""
    collection = v2_json()
    collection["payloads"][0]["event"] = "PLACEHOLDER"
    body = json_bytes(collection).replace(b"PLACEHOLDER", b"a\\ud800b\xffc")
    assert post_v2(collector2, body, secret, JSON).status_code == 200
    (event,) = collector2.events()
    assert event["event"] == "a\ufffdb\ufffdc"


# -- schema 2: the other schema is refused ---------------------------------------------


def test_v2_collector_refuses_schema_1_requests(collector2: DevCollector, secret: str) -> None:
    assert post_signed(collector2, vector_body(), secret).status_code == 400
    assert post_signed(collector2, HEADER, secret).status_code == 400  # even an empty one
    assert collector2.events() == []


def test_v1_collector_refuses_schema_2_requests(collector: DevCollector, secret: str) -> None:
    for body in (bytes.fromhex(V2_VECTOR_HEX), V2_HEADER):
        assert post_v2(collector, body, secret).status_code == 400
    assert post_v2(collector, json_bytes(v2_json()), secret, JSON).status_code == 400
    assert collector.events() == []
    assert collector.answered() == {400: 3}


@pytest.mark.parametrize("schema", [0, 3, "2", True, None])
def test_schema_must_be_1_or_2(schema: Any) -> None:
    with pytest.raises(ValueError, match="schema must be 1 or 2, got"):
        DevCollector(schema=schema)


@pytest.mark.parametrize(
    "entry",
    [["-m", "hamustro_logging.collector"], ["-m", "hamustro_logging", "collector"]],
    ids=["module", "cli"],
)
def test_command_line_collector_speaks_schema_2(tmp_path: Path, entry: list[str]) -> None:
    command = [sys.executable, *entry, "--schema", "2", "--port", "0", "--secret", VECTOR_SECRET]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=env
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline().decode()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+/api/v1/track)\n", line)
        assert match, line
        headers = {
            "X-Hamustro-Time": VECTOR_TIME,
            "X-Hamustro-Signature": V2_SIGNATURE,
            "Content-Type": PROTOBUF,
        }
        body = bytes.fromhex(V2_VECTOR_HEX)
        assert requests.post(match[1], data=body, headers=headers, timeout=10).status_code == 200
        v1_headers = signed_headers(vector_body(), VECTOR_SECRET)
        response = requests.post(match[1], data=vector_body(), headers=v1_headers, timeout=10)
        assert response.status_code == 400
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert [json.loads(line) for line in stdout.decode().splitlines()] == [EXPECTED_V2_EVENT]


def test_command_line_schema_must_be_1_or_2(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "hamustro_logging.collector", "--schema", "3", "--port", "0"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(command, capture_output=True, cwd=tmp_path, env=env, timeout=30)
    assert done.returncode == 2
    assert b"--schema: invalid choice: 3" in done.stderr
