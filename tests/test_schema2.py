"""Schema 2 end to end: the handler, ``ClientTracker`` and the CLI against the
development collector speaking schema 2 over real HTTP (issue 12)."""

from __future__ import annotations

import datetime
import enum
import io
import json
import logging
import logging.config
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hamustro_logging import ClientTracker, HamustroHandler
from hamustro_logging.cli import main
from hamustro_logging.collector import DevCollector
from hamustro_logging.config import default_system_language
from hamustro_logging.mapping import EventError, _LocalOffset, build_event_v2
from hamustro_logging.transport import Transport
from hamustro_logging.wire import encode_parameters, session_id, session_id_v2, sha256hex

from .support import TEST_SECRET, tracker_config

DEVICE = sha256hex("device-1")
#: collector.md's schema-2 vectors for the test identity.
SESSION_BETA = "305b8e19b4fb1c42b4adffaa373aa046"
SESSION_PRODUCTION = "afa05b4493e106463ae4084de91b6723"
SESSION_V1 = session_id(DEVICE, "client-1", "OS X 10.11", "1.0.0")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No HAMUSTRO_* from outside; default queue folders under tmp_path."""
    for name in list(os.environ):
        if name.startswith("HAMUSTRO_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


class HeaderRecorder(DevCollector):
    """A DevCollector that also keeps the headers of every request (read-only, for tests)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.received_headers: list[dict[str, str]] = []

    def _check(self, headers: Any, body: bytes) -> Any:
        self.received_headers.append(dict(headers.items()))
        return super()._check(headers, body)


@pytest.fixture
def collector2() -> Iterator[DevCollector]:
    """A started development collector speaking schema 2."""
    with DevCollector(secret=TEST_SECRET, output=io.StringIO(), schema=2) as running:
        yield running


def v2(collector: DevCollector | str, queue_dir: Path, **overrides: Any) -> dict[str, Any]:
    """tracker_config for schema 2, env BETA (collector.md's vector session)."""
    return tracker_config(collector, queue_dir, **({"schema": 2, "env": "beta"} | overrides))


def handler_for(
    config: dict[str, Any], logger: str = "app"
) -> tuple[HamustroHandler, logging.Logger]:
    """A handler on a logger of this module's own (``test_schema2.<logger>``), not propagating."""
    handler = HamustroHandler(**config)
    log = logging.getLogger(f"test_schema2.{logger}")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    return handler, log


def close(handler: HamustroHandler, log: logging.Logger) -> None:
    log.removeHandler(handler)
    log.propagate = True
    log.setLevel(logging.NOTSET)
    handler.close()


# -- dictConfig and the fields ----------------------------------------------------------


def test_dictconfig_schema2_delivers_every_field(tmp_path: Path, collector2: DevCollector) -> None:
    config = v2(
        collector2, tmp_path / "q", device_make="Apple", device_model="MacBookPro18,1",
        system="macOS", system_language="hu-HU", browser="Safari", browser_version="17.1",
        product_git_hash="abc123", product_language="en",
    )  # fmt: skip
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"hamustro": {"class": "hamustro_logging.HamustroHandler", **config}},
        "loggers": {
            "test_schema2.shop": {"level": "INFO", "handlers": ["hamustro"], "propagate": False},
        },
    })  # fmt: skip
    handler = logging.getLogger("test_schema2.shop").handlers[0]
    assert isinstance(handler, HamustroHandler)
    try:
        logging.getLogger("test_schema2.shop").info(
            "order",
            extra={
                "event": "order_placed", "user_id": "u-7", "tenant_id": "acme",
                "params": {"plan": "pro", "seats": 3}, "country": "HU",
                "timezone": "+01:00", "ip": "203.0.113.7",
            },
        )  # fmt: skip
        assert handler.flush(timeout=10)
    finally:
        logging.getLogger("test_schema2.shop").removeHandler(handler)
        logging.getLogger("test_schema2.shop").propagate = True
        handler.close()
    (event,) = collector2.wait_for(1)
    assert event == event | {
        "session": SESSION_BETA, "env": "BETA", "nr": 1, "event": "order_placed",
        "user_id": "u-7", "tenant_id": "acme", "country": "HU", "timezone": "+01:00",
        "ip": "203.0.113.7", "parameters": '{"plan":"pro","seats":"3"}',
        "device_id": DEVICE, "client_id": "client-1", "system_version": "OS X 10.11",
        "product_version": "1.0.0", "device_make": "Apple", "device_model": "MacBookPro18,1",
        "system": "macOS", "system_language": "hu-HU", "browser": "Safari",
        "browser_version": "17.1", "product_git_hash": "abc123", "product_language": "en",
    }  # fmt: skip
    assert "is_testing" not in event


def test_env_by_name_any_case_or_number_and_from_the_environment(
    tmp_path: Path, collector2: DevCollector, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i, env in enumerate(["PRODUCTION", "production", 0, "0"]):
        with ClientTracker(
            **tracker_config(collector2, tmp_path / f"q{i}", schema=2, env=env)
        ) as t:
            assert t.session == SESSION_PRODUCTION
    monkeypatch.setenv("HAMUSTRO_SCHEMA", "2")
    monkeypatch.setenv("HAMUSTRO_ENV", "Beta")
    with ClientTracker(**tracker_config(collector2, tmp_path / "env")) as t:
        assert (t.schema, t.env, t.session) == (2, 4, SESSION_BETA)
        t.track_event("from_env")
        assert t.flush()
    assert collector2.wait_for(1)[0]["env"] == "BETA"


def test_params_mapping_values(tmp_path: Path, collector2: DevCollector) -> None:
    params = {
        "text": "as is", "gone": None, "n": 3, "yes": True, "no": False, "x": 1.5,
        "list": [1, "a", None], "obj": {"k": [True]}, "empty": "", "unicode": "héllo ✓",
    }  # fmt: skip
    with ClientTracker(**v2(collector2, tmp_path / "q")) as t:
        t.track_event("with_params", params)
        t.track_event("no_params")
        t.track_event("all_none", {"a": None})
        assert t.flush()
    by_name = {e["event"]: e for e in collector2.wait_for(3)}
    assert json.loads(by_name["with_params"]["parameters"]) == {
        "text": "as is", "n": "3", "yes": "true", "no": "false", "x": "1.5",
        "list": '[1,"a",null]', "obj": '{"k":[true]}', "empty": "", "unicode": "héllo ✓",
    }  # fmt: skip
    assert by_name["no_params"]["parameters"] == "{}"
    assert by_name["all_none"]["parameters"] == "{}"


def test_an_int_user_id_is_sent_as_its_decimal_string(
    tmp_path: Path, collector2: DevCollector
) -> None:
    with ClientTracker(**v2(collector2, tmp_path / "q")) as t:
        t.track_event("signup", user_id=7)
        assert t.flush()
    handler, log = handler_for(v2(collector2, tmp_path / "h"))
    try:
        log.info("x", extra={"event": "signup_log", "user_id": 8})  # a schema-1 app, unchanged
        assert handler.flush(timeout=10)
    finally:
        close(handler, log)
    assert sorted(e["user_id"] for e in collector2.wait_for(2)) == ["7", "8"]


def test_timezone_defaults_to_the_local_offset_at_the_event(
    tmp_path: Path, collector2: DevCollector
) -> None:
    with ClientTracker(**v2(collector2, tmp_path / "q")) as t:
        t.track_event("local")
        t.track_event("given", timezone="Europe/Budapest", country="HU")
        assert t.flush()
    by_name = {e["event"]: e for e in collector2.wait_for(2)}
    at = by_name["local"]["at"]
    offset = datetime.datetime.fromtimestamp(at).astimezone().strftime("%z")
    assert by_name["local"]["timezone"] == offset[:3] + ":" + offset[3:]
    assert by_name["local"]["country"] is None  # only when given: nothing is looked up
    assert (by_name["given"]["timezone"], by_name["given"]["country"]) == ("Europe/Budapest", "HU")


@pytest.mark.skipif(
    not os.path.exists("/usr/share/zoneinfo/Europe/Budapest"),
    reason="no time zone database here (tzdata): TZ would silently mean UTC",
)
def test_local_offset_follows_the_zone_and_its_daylight_saving_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    try:
        monkeypatch.setenv("TZ", "Europe/Budapest")
        time.tzset()
        offset = _LocalOffset()
        change = 1711846800  # 2024-03-31 01:00:00 UTC: Budapest goes from +01:00 to +02:00
        assert offset(change - 1) == b"+01:00"
        assert offset(change - 0.5) == b"+01:00"  # from the cache
        assert offset(change) == b"+02:00"
        monkeypatch.setenv("TZ", "Asia/Kolkata")
        time.tzset()
        assert _LocalOffset()(change) == b"+05:30"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_system_language_defaults_to_the_locale_as_a_language_tag(
    tmp_path: Path, collector2: DevCollector, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert default_system_language({"LANG": "en_US.UTF-8"}) == "en-US"
    assert default_system_language({"LC_ALL": "de_DE@euro", "LANG": "en_US"}) == "de-DE"
    assert default_system_language({"LC_MESSAGES": "pt_BR"}) == "pt-BR"
    assert default_system_language({"LANG": "POSIX"}) is None
    for name in ("LC_ALL", "LC_MESSAGES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANG", "hu_HU.UTF-8")
    with ClientTracker(**v2(collector2, tmp_path / "q")) as t:
        t.track_event("e")
        assert t.flush()
    assert collector2.wait_for(1)[0]["system_language"] == "hu-HU"


# -- the user: set_user, defaults, overrides --------------------------------------------


def test_user_and_tenant_defaults_and_overrides(tmp_path: Path, collector2: DevCollector) -> None:
    handler, log = handler_for(v2(collector2, tmp_path / "q", tenant_id="acme", user_id="anon"))
    try:
        log.info("x", extra={"event": "option_defaults"})
        log.info("x", extra={"event": "own_user", "user_id": "u-7"})
        log.info("x", extra={"event": "own_both", "user_id": "u-7", "tenant_id": "other"})
        handler.tracker.set_user("t-2", "u-9")
        log.info("x", extra={"event": "stored_user"})
        log.info("x", extra={"event": "own_wins", "user_id": "u-1", "tenant_id": "t-1"})
        handler.tracker.set_user(None, None)  # signed out: the options again
        log.info("x", extra={"event": "signed_out"})
        assert handler.flush(timeout=10)
    finally:
        close(handler, log)
    got = {e["event"]: (e["tenant_id"], e["user_id"]) for e in collector2.wait_for(6)}
    assert got == {
        "option_defaults": ("acme", "anon"),
        "own_user": ("acme", "u-7"),
        "own_both": ("other", "u-7"),
        "stored_user": ("t-2", "u-9"),
        "own_wins": ("t-1", "u-1"),
        "signed_out": ("acme", "anon"),
    }


def test_set_user_survives_a_restart(tmp_path: Path, collector2: DevCollector) -> None:
    with ClientTracker(**v2(collector2, tmp_path / "q")) as t:
        assert t.load_user() == (None, None)
        t.track_event("before_login")
        t.set_user("acme", 42)
        t.track_event("after_login")
        t.track_event("someone_else", user_id="u-1")
        assert t.flush()
    with ClientTracker(**v2(collector2, tmp_path / "q")) as t:
        assert t.load_user() == ("acme", "42")
        t.track_event("after_restart")
        assert t.flush()
    handler, log = handler_for(v2(collector2, tmp_path / "q"))
    try:
        log.info("x", extra={"event": "handler_after_restart"})
        assert handler.flush(timeout=10)
    finally:
        close(handler, log)
    got = {e["event"]: (e["tenant_id"], e["user_id"]) for e in collector2.wait_for(5)}
    assert got == {
        "before_login": (None, None),
        "after_login": ("acme", "42"),
        "someone_else": ("acme", "u-1"),
        "after_restart": ("acme", "42"),
        "handler_after_restart": ("acme", "42"),
    }


# -- both schemas in one folder ---------------------------------------------------------


def test_a_folder_holding_both_schemas_delivers_each_in_its_own(
    tmp_path: Path, collector: DevCollector, collector2: DevCollector
) -> None:
    folder = tmp_path / "shared"
    h1, log1 = handler_for(tracker_config(collector, folder), "app.v1")
    h2, log2 = handler_for(v2(collector2, folder), "app.v2")
    try:
        for i in range(3):
            log1.info("x", extra={"event": f"one_{i}", "user_id": i, "params": {"i": i}})
            log2.info("x", extra={"event": f"two_{i}", "user_id": f"u{i}", "params": {"i": i}})
        # Both on disk before anything is sent: the folder holds both schemas.
        h1._flusher.write_buffer(time.monotonic() + 10)
        h2._flusher.write_buffer(time.monotonic() + 10)
        assert main(["export", "--queue-dir", str(folder)]) == 0
        assert h1.flush(timeout=10) and h2.flush(timeout=10)
    finally:
        close(h1, log1)
        close(h2, log2)
    one = collector.wait_for(3)
    two = collector2.wait_for(3)
    assert sorted(e["event"] for e in one) == ["one_0", "one_1", "one_2"]
    assert {(e["session"], e["user_id"], e["parameters"]) for e in one} >= {
        (SESSION_V1, 1, '{"i":1}')
    }
    assert sorted(e["event"] for e in two) == ["two_0", "two_1", "two_2"]
    assert {(e["session"], e["user_id"], e["parameters"]) for e in two} >= {
        (SESSION_BETA, "u1", '{"i":"1"}')
    }
    assert collector.answered() == {
        200: collector.answered()[200]
    }  # no 400: never the other schema
    assert collector2.answered() == {200: collector2.answered()[200]}


def test_status_and_export_show_both_schemas(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "q"
    nowhere = "http://127.0.0.1:9"
    with ClientTracker(**tracker_config(nowhere, folder, queue_size=100, detect_ip=False)) as t1:
        t1.track_event("one", 7, {"plan": "pro"})
    with ClientTracker(**v2(nowhere, folder, queue_size=100, detect_ip=False)) as t2:
        t2.set_user("acme", "u-7")
        t2.track_event("two", {"plan": "pro", "seats": 3}, country="HU", timezone="+01:00")
    capsys.readouterr()
    assert main(["export", "--queue-dir", str(folder)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_event = {line["event"]: line for line in lines}
    assert "schema" not in by_event["one"]  # a schema-1 line is as it always was
    assert by_event["one"]["parameters"] == '{"plan":"pro"}' and by_event["one"]["user_id"] == 7
    assert by_event["two"] == by_event["two"] | {
        "schema": 2, "session": SESSION_BETA, "nr": 1, "env": "BETA",
        "parameters": {"plan": "pro", "seats": "3"}, "user_id": "u-7", "tenant_id": "acme",
        "country": "HU", "timezone": "+01:00", "device_id": DEVICE,
    }  # fmt: skip
    assert main(["status", "--json", "--queue-dir", str(folder)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {row["session"]: row["schema"] for row in doc["sessions"]} == {
        SESSION_V1: 1,
        SESSION_BETA: 2,
    }
    assert main(["status", "--queue-dir", str(folder)]) == 0
    table = capsys.readouterr().out
    assert f"{SESSION_BETA} (schema 2)" in table and f"{SESSION_V1} (schema 1)" in table


# -- the headers option -----------------------------------------------------------------


def test_headers_reach_the_collector_and_are_never_shown_or_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = "proxy-token-5f2e"  # noqa: S105 -- a test value
    recorder = HeaderRecorder(secret=TEST_SECRET, output=io.StringIO(), schema=2)
    with recorder:
        config = v2(
            recorder, tmp_path / "q", headers={"X-Proxy-Auth": token, "User-Agent": "app/1"}
        )
        with ClientTracker(**config) as t:
            t.track_event("e")
            assert t.flush()
            assert token not in repr(t) and token not in repr(t.transport)
        handler, log = handler_for(config)
        try:
            log.info("x", extra={"event": "from_handler"})
            assert handler.flush(timeout=10)
            assert token not in repr(handler)
        finally:
            close(handler, log)
        recorder.wait_for(2)
        received = recorder.received_headers
    assert received and all(h.get("X-Proxy-Auth") == token for h in received)
    assert all(h.get("User-Agent") == "app/1" for h in received)  # it may replace the User-Agent
    assert all(h["Content-Type"] == "application/protobuf" for h in received)
    assert token not in capsys.readouterr().err
    for path in (tmp_path / "q").rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


def test_headers_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAMUSTRO_HEADERS", '{"X-Proxy-Auth": "from-env"}')
    recorder = HeaderRecorder(secret=TEST_SECRET, output=io.StringIO())
    with recorder, ClientTracker(**tracker_config(recorder, tmp_path / "q")) as t:  # schema 1 too
        t.track_event("e")
        assert t.flush()
    assert recorder.received_headers[-1]["X-Proxy-Auth"] == "from-env"
    monkeypatch.setenv("HAMUSTRO_HEADERS", '["not", "an object"]')
    with pytest.raises(
        ValueError, match=r"^headers: cannot use \$HAMUSTRO_HEADERS: expected a JSON object"
    ):
        ClientTracker(**tracker_config("http://127.0.0.1:9", tmp_path / "q2"))


# -- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"schema": 3}, "schema must be 1 or 2, got 3"),
        ({"schema": "2.0"}, "schema must be 1 or 2, got '2.0'"),
        ({"env": "beta"}, "env exists only in schema 2; this one uses schema 1"),
        ({"device_make": "Apple"}, "device_make exists only in schema 2"),
        ({"system_language": "en-US"}, "system_language exists only in schema 2"),
        ({"browser": "Firefox"}, "browser exists only in schema 2"),
        ({"schema": 2}, "env is required with schema 2: pass it or set $HAMUSTRO_ENV"),
        ({"schema": 2, "env": "prod"}, "env must be an Environment name"),
        ({"schema": 2, "env": 12}, "env must be an Environment name"),
        ({"headers": {"Content-Type": "text/plain"}}, "headers may not set 'Content-Type'"),
        ({"headers": {"x-hamustro-signature": "x"}}, "headers may not set 'x-hamustro-signature'"),
        ({"headers": {"X-Ok": "line\r\nbreak"}}, "the value of 'X-Ok' cannot be sent"),
        ({"headers": {"bad name": "v"}}, "'bad'... (the rest not shown) is not a valid HTTP"),
        ({"headers": {"X-Ok": "\xa0leading no-break space"}}, "the value of 'X-Ok' cannot be sent"),
    ],
)
def test_tracker_and_handler_refuse_options(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    config = tracker_config("http://127.0.0.1:9", tmp_path / "q", **options)
    for make in (ClientTracker, HamustroHandler):
        with pytest.raises(ValueError) as caught:
            make(**config)
        assert message in str(caught.value)
        assert len(str(caught.value).splitlines()) == 1
    assert not (tmp_path / "q").exists()  # refused before the folder was made


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"schema": 2, "env": 0, "is_testing": True},
         "is_testing: the handler-wide option is_testing exists only in schema 1"),
        ({"schema": 2, "env": 0, "is_testing": False}, "is_testing exists only in schema 1"),
        ({"tenant_id": "acme"},
         "tenant_id: the handler-wide option tenant_id exists only in schema 2"),
        ({"user_id": "u-1"}, "user_id exists only in schema 2"),
    ],
)  # fmt: skip
def test_handler_refuses_options_of_the_other_schema(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        HamustroHandler(**tracker_config("http://127.0.0.1:9", tmp_path / "q", **options))
    assert message in str(caught.value)
    assert not (tmp_path / "q").exists()


def test_an_option_from_the_environment_is_refused_naming_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HAMUSTRO_ENV", "beta")
    with pytest.raises(
        ValueError, match=r"^\$HAMUSTRO_ENV: the option env exists only in schema 2"
    ):
        ClientTracker(**tracker_config("http://127.0.0.1:9", tmp_path / "q"))
    monkeypatch.delenv("HAMUSTRO_ENV")
    monkeypatch.setenv("HAMUSTRO_IS_TESTING", "true")
    with pytest.raises(ValueError, match=r"^\$HAMUSTRO_IS_TESTING: the handler-wide option"):
        HamustroHandler(**v2("http://127.0.0.1:9", tmp_path / "q"))
    monkeypatch.setenv("HAMUSTRO_SCHEMA", "two")
    with pytest.raises(
        ValueError, match=r"^schema: cannot use \$HAMUSTRO_SCHEMA: schema must be 1 or 2"
    ):
        ClientTracker(**tracker_config("http://127.0.0.1:9", tmp_path / "q"))


@pytest.mark.parametrize(
    ("extra", "field", "says"),
    [
        ({"is_testing": True}, "is_testing", "does not exist in schema 2"),
        ({"is_testing": False}, "is_testing", "does not exist in schema 2"),
        ({"params": "plan=pro"}, "params", "got str (schema 1's form; schema 2 takes a mapping)"),
        ({"params": ["a"]}, "params", "expected a mapping of str names to values, got list"),
        ({"params": {1: "a"}}, "params", "names must be str, got int"),
        ({"params": {"": "a"}}, "params", "a parameter name may not be empty"),
        ({"params": {"x": float("nan")}}, "params", "the value of 'x' cannot be JSON-encoded"),
        ({"params": {"x": "\ud800"}}, "params", "str is not valid Unicode"),
        ({"user_id": 1.5}, "user_id", "expected str (or int), got float"),
        ({"user_id": True}, "user_id", "expected str (or int), got bool"),
        ({"tenant_id": 3}, "tenant_id", "expected str, got int"),
        ({"country": b"HU"}, "country", "expected str, got bytes"),
        ({"timezone": 1}, "timezone", "expected str, got int"),
        ({"ip": "nope"}, "ip", "is not an IPv4 or IPv6 address"),
    ],
)
def test_bad_schema2_records_are_refused_naming_the_field(
    tmp_path: Path,
    collector2: DevCollector,
    capsys: pytest.CaptureFixture[str],
    extra: dict[str, Any],
    field: str,
    says: str,
) -> None:
    handler, log = handler_for(v2(collector2, tmp_path / "q"))
    try:
        log.info("bad", extra={"event": "bad", **extra})
        log.info("good", extra={"event": "good"})
        assert handler.flush(timeout=10) is False  # sent, but a record was dropped
        assert handler.stats()["dropped"]["invalid"] == 1
    finally:
        close(handler, log)
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if "not queued" in line]
    assert f"hamustro event field '{field}': " in line and says in line
    assert [e["event"] for e in collector2.wait_for(1)] == ["good"]
    with ClientTracker(**v2(collector2, tmp_path / "t")) as t:
        fields = {k: v for k, v in extra.items() if k != "params"}
        with pytest.raises(EventError) as caught:
            t.track_event("bad", extra.get("params"), **fields)
        assert caught.value.field == field and says in str(caught.value)
        assert t.stats()["pending"] == 0


def test_fields_and_calls_of_the_other_schema_are_refused(tmp_path: Path) -> None:
    nowhere = "http://127.0.0.1:9"
    with ClientTracker(**tracker_config(nowhere, tmp_path / "one")) as t1:
        for name in ("tenant_id", "timezone", "country"):
            with pytest.raises(EventError, match=f"'{name}': exists only in schema 2"):
                t1.track_event("e", **{name: "x"})  # type: ignore[call-overload]
        with pytest.raises(ValueError, match=r"^set_user exists only in schema 2"):
            t1.set_user("acme", "u-1")
        assert t1.load_user() == (None, None)
    with ClientTracker(**v2(nowhere, tmp_path / "two")) as t2:
        with pytest.raises(EventError, match="'is_testing': does not exist in schema 2"):
            t2.track_event("e", is_testing=True)
        with pytest.raises(ValueError, match="user_id must be a non-empty str"):
            t2.set_user("acme", "")
        with pytest.raises(TypeError, match="tenant_id must be str or None, got int"):
            t2.set_user(5, "u")  # type: ignore[arg-type]  # the wrong type on purpose


def test_build_event_v2_bounds_the_whole_event(tmp_path: Path) -> None:
    with pytest.raises(EventError) as caught:
        build_event_v2("e", user_id="u" * 100, at=0, max_event_bytes=50)
    assert caught.value.field == "user_id" and "more than max_event_bytes=50" in str(caught.value)


def test_transport_repr_and_errors_never_show_header_values() -> None:
    transport = Transport("http://127.0.0.1:9", "s", headers={"X-Proxy-Auth": "secret-value"})
    assert "secret-value" not in repr(transport)
    with pytest.raises(ValueError) as caught:
        Transport("http://127.0.0.1:9", "s", headers={"X-Proxy-Auth": "secret\nvalue"})
    assert "secret" not in str(caught.value).replace("secret'", "")


# -- the CLI ----------------------------------------------------------------------------


def cli_config(url: str, queue_dir: Path, *more: str) -> list[str]:
    return [
        "--collector-url", url, "--shared-secret-key", TEST_SECRET, "--device-id", "device-1",
        "--client-id", "client-1", "--system-version", "OS X 10.11",
        "--product-version", "1.0.0", "--queue-dir", str(queue_dir), *more,
    ]  # fmt: skip


def test_send_test_in_schema_2(
    tmp_path: Path, collector2: DevCollector, capsys: pytest.CaptureFixture[str]
) -> None:
    args = cli_config(collector2.url, tmp_path / "q", "--schema", "2", "--env", "beta")
    assert main(["send-test", *args]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: the collector accepted the test event") and "schema 2" in out
    (event,) = collector2.wait_for(1)
    assert (event["event"], event["env"], event["product_version"]) == (
        "hamustro_logging.send_test", "BETA", "1.0.0+send-test",
    )  # fmt: skip
    assert collector2.answered() == {204: 1, 200: 1}


@pytest.mark.parametrize("configured", [1, 2])
def test_send_test_says_which_schema_the_collector_speaks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], configured: int
) -> None:
    speaks = 2 if configured == 1 else 1
    more = ["--schema", "2", "--env", "beta"] if configured == 2 else []
    with DevCollector(secret=TEST_SECRET, output=io.StringIO(), schema=speaks) as running:
        assert main(["send-test", *cli_config(running.url, tmp_path / "q", *more)]) == 1
        assert running.events() == []
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert (
        f"speaks schema {speaks}, this configuration schema {configured}: set schema={speaks} "
        f"(--schema {speaks} or HAMUSTRO_SCHEMA={speaks})"
    ) in err


@pytest.mark.parametrize(
    ("more", "message"),
    [
        (["--env", "beta"], "--env exists only in schema 2; this configuration uses schema 1"),
        (["--schema", "2"], "schema 2 needs --env (or HAMUSTRO_ENV)"),
        (["--schema", "3"], "schema must be 1 or 2, got '3'"),
        (["--headers", "{not json"], "--headers (or HAMUSTRO_HEADERS) is not a JSON object"),
        (["--headers", '{"Content-Type": "x"}'], "headers may not set 'Content-Type'"),
    ],
)
def test_cli_refuses_bad_schema_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], more: list[str], message: str
) -> None:
    assert main(["send-test", *cli_config("http://127.0.0.1:9", tmp_path / "q", *more)]) == 2
    assert message in capsys.readouterr().err


def test_cli_flush_sends_a_schema_2_folder(
    tmp_path: Path, collector2: DevCollector, capsys: pytest.CaptureFixture[str]
) -> None:
    with ClientTracker(**v2(collector2.url, tmp_path / "q", queue_size=100)) as t:
        t.track_event("queued", {"a": 1})
    # Only the folder, the URL and the secret: the session's stored header says schema 2.
    args = ["--collector-url", collector2.url, "--shared-secret-key", TEST_SECRET]
    assert main(["flush", *args, "--queue-dir", str(tmp_path / "q")]) == 0
    assert "sent 1, failed attempts 0, left 0" in capsys.readouterr().out
    assert collector2.wait_for(1)[0]["parameters"] == '{"a":"1"}'


def test_session_v2_matches_the_wire(tmp_path: Path) -> None:
    with ClientTracker(**v2("http://127.0.0.1:9", tmp_path / "q", env="DEVELOPMENT")) as t:
        assert t.session == session_id_v2(DEVICE, "client-1", "OS X 10.11", "1.0.0", 11)
        assert t.session == "939a35fdf3559db729bc198f2babddc5"


def test_a_str_subclass_params_value_is_sent_as_its_text() -> None:
    class Color(str, enum.Enum):
        RED = "red"

    event = build_event_v2("e", {"c": Color.RED, "s": "plain"}, at=0)
    assert event.params == encode_parameters([(b"c", b"red"), (b"s", b"plain")])


def test_an_empty_user_or_tenant_is_refused_and_a_schema_1_call_is_told_the_schema_2_form(
    tmp_path: Path, collector: DevCollector
) -> None:
    with pytest.raises(EventError, match="field 'user_id': expected a non-empty str"):
        build_event_v2("e", user_id="", at=0)
    with pytest.raises(EventError, match="field 'tenant_id': expected a non-empty str"):
        build_event_v2("e", tenant_id="", at=0)
    config = tracker_config(collector, tmp_path, schema=2, env="beta")
    with (
        ClientTracker(**config) as t,
        pytest.raises(TypeError, match=r"takes \(event, params=None\) positionally"),
    ):
        t.track_event("e", 7, {"plan": "pro"})
