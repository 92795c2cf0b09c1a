"""The pytest plugin, tested as a user meets it: pytest's own ``pytester`` runs test files.

Each test writes a small test file of an application's (and sometimes its
``conftest.py``), runs pytest on it in-process, and reads the outcome: the
fixtures come from the package's ``pytest11`` entry point, as they do for a
user who only installed the package. ``EventCapture`` is also compared,
event for event, with what a real handler delivers to the development
collector on loopback, in both schemas.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from hamustro_logging import HamustroHandler
from hamustro_logging.collector import DevCollector
from hamustro_logging.testing import EventCapture

from .support import TEST_SECRET

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("HAMUSTRO_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # Where the fixtures' temporary folders go, to see that none is left.
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))


def run(pytester: pytest.Pytester, test_file: str, conftest: str = "") -> pytest.RunResult:
    """Run pytest on one test file (and a conftest.py) of an application, in-process."""
    if conftest:
        pytester.makeconftest(textwrap.dedent(conftest))
    pytester.makepyfile(test_app=textwrap.dedent(test_file))
    return pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly")


# -- the entry point, and the package without pytest ----------------------------------------


def test_the_plugin_is_declared_as_a_pytest11_entry_point() -> None:
    found = [e for e in entry_points(group="pytest11") if e.name == "hamustro_logging"]
    assert [e.value for e in found] == ["hamustro_logging.pytest_plugin"]
    assert "[project.entry-points.pytest11]" in (ROOT / "pyproject.toml").read_text()


def test_the_package_imports_without_pytest() -> None:
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        sys.modules["pytest"] = None  # any import of pytest now fails
        sys.modules["_pytest"] = None
        import hamustro_logging
        for module in pkgutil.iter_modules(hamustro_logging.__path__):
            if module.name != "pytest_plugin":
                importlib.import_module("hamustro_logging." + module.name)
        try:
            import hamustro_logging.pytest_plugin
        except ImportError:
            print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAMUSTRO_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr


# -- hamustro_events -----------------------------------------------------------------------------

APP = """
    import logging, threading

    import pytest

    log = logging.getLogger("shop")

    def checkout(total, user_id=7):
        log.warning("order placed", extra={
            "event": "order_placed", "user_id": user_id, "params": {"total": total},
        })
"""


def test_hamustro_events_captures_and_asserts(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        APP
        + """
    def test_an_event_and_its_fields(hamustro_events):
        checkout(12)
        log.warning("a plain line, no event")
        event = hamustro_events.assert_logged("order_placed", params={"total": 12}, user_id=7)
        assert event["nr"] == 1 and event["is_testing"] is False
        assert len(hamustro_events) == 1 and hamustro_events[0] is not None
        assert hamustro_events[0]["params"] == {"total": 12}
        assert hamustro_events[0]["parameters"] == '{"total":12}'  # as sent
        assert [e["event"] for e in hamustro_events] == hamustro_events.names()
        hamustro_events.assert_not_logged("refund")
        hamustro_events.assert_not_logged("order_placed", params={"total": 13})
        hamustro_events.assert_no_errors()

    def test_several_and_count(hamustro_events):
        checkout(1); checkout(2, user_id=8); checkout(1)
        assert [e["nr"] for e in hamustro_events.named("order_placed")] == [1, 2, 3]
        hamustro_events.assert_logged("order_placed", params={"total": 1}, count=2)
        hamustro_events.assert_logged("order_placed", user_id=8, count=1)
        hamustro_events.clear()
        assert list(hamustro_events) == []
        checkout(3)
        assert [e["nr"] for e in hamustro_events] == [4]

    def test_other_threads_too(hamustro_events):
        thread = threading.Thread(target=checkout, args=(5,))
        thread.start(); thread.join()
        hamustro_events.assert_logged("order_placed", params={"total": 5})

    def test_a_refused_record_is_an_error(hamustro_events):
        log.warning("bad", extra={"event": "order_placed", "user_id": "seven"})
        assert hamustro_events.names() == []
        (error,) = hamustro_events.errors
        assert error == ("event from logger 'shop' not queued: hamustro event field "
                         "'user_id': expected int, got str")

    def test_levels_as_the_application_sets_them(hamustro_events):
        log.info("info", extra={"event": "below_the_root_level"})
        assert hamustro_events.names() == []  # root at WARNING: never sent either
        hamustro_events.set_level(logging.INFO)
        log.info("info", extra={"event": "now_at_info"})
        assert hamustro_events.names() == ["now_at_info"]

    def test_the_root_logger_is_left_as_it_was():
        root = logging.getLogger()
        assert root.level == logging.WARNING
        assert not [h for h in root.handlers if type(h).__name__ == "HamustroHandler"]
    """,
    )
    result.assert_outcomes(passed=6)


def test_failing_assertions_say_what_was_captured(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        APP
        + """
    def test_wrong_total(hamustro_events):
        checkout(11)
        log.warning("bad", extra={"event": "refund", "params": float("nan")})
        hamustro_events.assert_logged("order_placed", params={"total": 12})

    def test_wrong_count(hamustro_events):
        checkout(1)
        hamustro_events.assert_logged("order_placed", count=2)

    def test_unexpected(hamustro_events):
        checkout(1)
        hamustro_events.assert_not_logged("order_placed")

    def test_no_errors(hamustro_events):
        log.warning("bad", extra={"event": ""})
        hamustro_events.assert_no_errors()
    """,
    )
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines(
        [
            "E       AssertionError: no event 'order_placed' with params containing "
            "{'total': 12}; 1 event in all:",
            "E         nr 1 'order_placed' params={'total': 11}",
            "E       refused by the handler (not queued):",
            "E         event from logger 'shop' not queued: hamustro event field 'params'*",
            "E       AssertionError: expected 2 events 'order_placed', found 1; 1 event in all:",
            "E       AssertionError: 1 unexpected event 'order_placed'; 1 event in all:",
            "E       AssertionError: the handler refused records:",
            "E         event from logger 'shop' not queued: hamustro event field 'event'*",
        ]
    )
    # The failure points at the test's line, not into the helper.
    assert "hamustro_logging/testing.py" not in result.stdout.str()


def test_schema_2_and_the_options_of_the_application(pytester: pytest.Pytester) -> None:
    conftest = """
    import pytest

    @pytest.fixture
    def hamustro_handler_options():
        return {"schema": 2, "env": "beta", "event_key": "track", "tenant_id": "acme"}
    """
    result = run(
        pytester,
        """
    import logging

    import pytest

    from hamustro_logging import HamustroHandler, build_event_v2

    log = logging.getLogger("shop")

    def test_the_conftest_options(hamustro_events):
        assert hamustro_events.schema == 2
        log.warning("x", extra={"track": "signup", "params": {"plan": "pro", "seats": 3}})
        event = hamustro_events.assert_logged(
            "signup", params={"plan": "pro", "seats": 3}, tenant_id="acme", user_id=None
        )
        assert event["params"] == {"plan": "pro", "seats": "3"}  # schema 2 sends str values
        assert (event["env"], event["schema"]) == ("BETA", 2)
        log.warning("x", extra={"event": "not_the_event_key"})
        assert hamustro_events.names() == ["signup"]

    def test_the_stored_user(hamustro_events):
        hamustro_events.handler.tracker.set_user("acme", 7)
        log.warning("x", extra={"track": "signup"})
        hamustro_events.assert_logged("signup", user_id=7)  # sent as "7"
        hamustro_events.assert_logged("signup", user_id="7")

    @pytest.mark.hamustro(schema=1, tenant_id=None, env=None)
    def test_the_marker_wins(hamustro_events):
        assert hamustro_events.schema == 1
        log.warning("x", extra={"track": "signup", "user_id": 3})
        hamustro_events.assert_logged("signup", user_id=3, is_testing=False)

    class Mine(HamustroHandler):
        def map_record(self, record):
            if record.name != "shop":
                return None
            return build_event_v2(record.getMessage(), user_id="u-1", at=record.created)

    @pytest.mark.hamustro(handler_class=Mine)
    def test_the_application_handler_class(hamustro_events):
        assert type(hamustro_events.handler) is Mine
        log.warning("from_the_message")
        logging.getLogger("other").warning("ignored by Mine")
        hamustro_events.assert_logged("from_the_message", user_id="u-1")
        assert len(hamustro_events) == 1

    @pytest.mark.hamustro(logger="shop.quiet")
    def test_another_logger(hamustro_events):
        quiet = logging.getLogger("shop.quiet")
        quiet.propagate = False
        try:
            quiet.warning("x", extra={"track": "quiet_event"})
        finally:
            quiet.propagate = True
        hamustro_events.assert_logged("quiet_event")
    """,
        conftest,
    )
    result.assert_outcomes(passed=5)


def test_no_network_no_thread_and_no_folder_left(pytester: pytest.Pytester, tmp_path: Path) -> None:
    where = tmp_path / "folder.txt"
    result = run(
        pytester,
        APP
        + f"""
    from pathlib import Path

    def test_capture(hamustro_events):
        folder = hamustro_events.handler.tracker.queue_dir
        Path({str(where)!r}).write_text(str(folder))
        assert folder.is_dir()
        checkout(1)
        assert len(hamustro_events) == 1
        assert hamustro_events.handler.sender == "agent"  # no thread, no network I/O
        assert not [t for t in threading.enumerate() if t.name.startswith("hamustro")]
    """,
    )
    result.assert_outcomes(passed=1)
    folder = Path(where.read_text())
    assert folder.parent == tmp_path / "tmp" and not folder.exists()
    assert list((tmp_path / "tmp").iterdir()) == []  # nothing left in the temporary folder


def test_a_misused_marker_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
    import pytest

    @pytest.mark.hamustro(2)
    def test_it(hamustro_events):
        pass

    @pytest.mark.hamustro(queue_dir="/tmp/x")
    def test_own(hamustro_events):
        pass
    """,
    )
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "*@pytest.mark.hamustro takes options by name only*",
            "*EventCapture sets queue_dir itself; leave it out*",
        ]
    )


# -- hamustro_collector -------------------------------------------------------------------------


def test_hamustro_collector_end_to_end_in_both_schemas(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    result = run(
        pytester,
        APP
        + """
    from hamustro_logging import HamustroHandler

    @pytest.mark.parametrize("schema", [1, 2])
    def test_delivered(hamustro_collector, schema):
        collector = hamustro_collector(schema=schema)
        assert collector.url.startswith("http://127.0.0.1:") and collector.schema == schema
        handler = HamustroHandler(**collector.handler_options(client_id="shop"))
        log.addHandler(handler)
        try:
            checkout(12)
            event = collector.assert_logged("order_placed", params={"total": 12}, user_id=7)
            assert event["client_id"] == "shop"
            assert len(collector.wait_for(1)) == 1
        finally:
            log.removeHandler(handler)
            handler.close()

    def test_two_at_once_and_a_wrong_secret(hamustro_collector):
        good = hamustro_collector()
        other = hamustro_collector(secret="another")
        options = good.handler_options(shared_secret_key="wrong")
        handler = HamustroHandler(**options)
        log.addHandler(handler)
        try:
            checkout(1)
            assert handler.flush(timeout=5) is False
        finally:
            log.removeHandler(handler)
            handler.close()
        assert set(good.answered()) == {405} and other.url != good.url

    def test_not_delivered(hamustro_collector):
        collector = hamustro_collector()
        collector.assert_logged("order_placed", timeout=0.2)
    """,
    )
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        ["E       AssertionError: no event 'order_placed'; 0 events in all:"]
    )
    assert list((tmp_path / "tmp").iterdir()) == []  # every handler's folder removed


# -- exactly as the handler sends --------------------------------------------------------------

#: Records of every kind the default mapping reads, per schema.
RECORDS: dict[int, list[dict[str, Any]]] = {
    1: [
        {"event": "signup"},
        {"event": "order_placed", "user_id": 7, "params": {"total": 12, "items": ["a", "b"]}},
        {"event": "ping", "params": "plain text", "is_testing": True, "ip": "10.1.2.3"},
        {"event": "unicode é", "user_id": 0, "params": {"note": "€ <b>"}},
    ],
    2: [
        {"event": "signup"},
        {"event": "order_placed", "user_id": 7, "params": {"total": 12, "paid": True}},
        {"event": "ping", "tenant_id": "acme", "timezone": "+02:00", "country": "HU"},
        {"event": "visit", "ip": "10.1.2.3", "params": {"note": "€ <b>", "skip": None}},
    ],
}


@pytest.mark.parametrize("schema", [1, 2])
def test_the_capture_equals_what_the_handler_delivers(
    tmp_path: Path, collector_v: DevCollector, schema: int
) -> None:
    identity: dict[str, Any] = {
        "shared_secret_key": TEST_SECRET, "device_id": "device-1", "client_id": "client-1",
        "system_version": "OS X 10.11", "product_version": "1.0.0", "schema": schema,
        "detect_ip": False, "queue_size": 1,
    }  # fmt: skip
    if schema == 2:
        identity |= {"env": "beta", "user_id": "default-user"}
    log = logging.getLogger("test_plugin.same")
    log.propagate = False
    real = HamustroHandler(collector_url=collector_v.url, queue_dir=tmp_path / "q", **identity)
    capture = EventCapture(logger=log, collector_url=collector_v.url, **identity)
    log.addHandler(real)
    try:
        with capture:
            for extra in RECORDS[schema]:
                log.warning("x", extra=extra)
            captured = capture.events
        assert real.flush(timeout=20) is True
    finally:
        log.removeHandler(real)
        real.close()
    delivered = collector_v.wait_for(len(RECORDS[schema]))
    assert len(captured) == len(delivered) == len(RECORDS[schema])
    for got, sent in zip(captured, delivered, strict=True):
        # The collector's own additions (at_utc; an ip from the request's
        # headers) aside, every field it stored is the capture's.
        same = set(sent) - {"at_utc", "ip", "parameters"}
        assert {k: got[k] for k in same} == {k: sent[k] for k in same}
        assert (got["ip"] or "") == sent["ip"]
        assert got["params"] == _decoded(sent["parameters"])


def _decoded(parameters: str | None) -> Any:
    """The collector's ``parameters`` (a JSON text, or schema 1's plain str) decoded."""
    if parameters is None:
        return None
    try:
        return json.loads(parameters)
    except ValueError:
        return parameters


@pytest.fixture
def collector_v(request: pytest.FixtureRequest) -> Iterator[DevCollector]:
    """The development collector of the test's ``schema``."""
    schema = request.node.callspec.params["schema"]
    with DevCollector(secret=TEST_SECRET, output=io.StringIO(), schema=schema) as running:
        yield running
