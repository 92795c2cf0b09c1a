"""``HamustroHandler`` end to end: logging in, the real dev collector on loopback out.

Every queue folder is under ``tmp_path``; every handler a test makes is
closed by the ``make_handler`` fixture, every logger it touches is put back
by ``attach``.
"""

from __future__ import annotations

import io
import json
import logging
import logging.config
import platform
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hamustro_logging import HamustroHandler, build_event, extra_attributes
from hamustro_logging.collector import DevCollector
from hamustro_logging.queue import Queue
from hamustro_logging.wire import Event, session_id, sha256hex

from .support import FAST, IDENTITY, SESSION, collector_at, dead_url, journal_events, pending_in

MakeHandler = Callable[..., HamustroHandler]
Attach = Callable[[str, logging.Handler], logging.Logger]


def keys(events: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(e["session"], e["nr"]) for e in events]


@pytest.fixture
def make_handler(tmp_path: Path, secret: str) -> Iterator[MakeHandler]:
    """Build handlers for the test (queue in tmp_path/"q" unless told); close them after."""
    made: list[HamustroHandler] = []

    def make(
        url: str,
        queue_dir: Path | None = None,
        cls: type[HamustroHandler] = HamustroHandler,
        **options: Any,
    ) -> HamustroHandler:
        settings: dict[str, Any] = {
            **IDENTITY,
            "collector_url": url,
            "shared_secret_key": secret,
            "queue_dir": str(queue_dir if queue_dir is not None else tmp_path / "q"),
            "close_timeout": 2.0,
            **FAST,
            **options,
        }
        handler = cls(**settings)
        made.append(handler)
        return handler

    yield make
    for handler in made:
        handler.close()


@pytest.fixture
def attach() -> Iterator[Attach]:
    """Put a handler on a named logger (INFO, not propagating); undo it after the test."""
    touched: list[tuple[logging.Logger, logging.Handler, int, bool]] = []

    def add(name: str, handler: logging.Handler) -> logging.Logger:
        logger = logging.getLogger(name)
        touched.append((logger, handler, logger.level, logger.propagate))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        return logger

    yield add
    for logger, handler, level, propagate in reversed(touched):
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def handler_config(
    collector_url: str, secret: str, queue_dir: Path, **options: Any
) -> dict[str, Any]:
    return {
        "class": "hamustro_logging.HamustroHandler",
        "collector_url": collector_url,
        "shared_secret_key": secret,
        **IDENTITY,
        "queue_dir": str(queue_dir),
        **options,
    }


def configured_handlers(*names: str) -> list[HamustroHandler]:
    found = []
    for name in names:
        logger = logging.getLogger(name)
        found += [h for h in logger.handlers if isinstance(h, HamustroHandler)]
    return found


def unconfigure(*names: str) -> None:
    """Close and detach what dictConfig put on these loggers; restore their defaults."""
    for name in names:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


# -- 1. dictConfig end to end ---------------------------------------------------


def test_dictconfig_end_to_end_every_field(
    collector: DevCollector, secret: str, tmp_path: Path
) -> None:
    config = {
        "version": 1,
        # dictConfig would otherwise disable every logger other tests created.
        "disable_existing_loggers": False,
        "handlers": {
            "hamustro": handler_config(
                collector.url, secret, tmp_path / "q", level="INFO", queue_size=3, **FAST
            ),
            "qa": handler_config(
                collector.url,
                secret,
                tmp_path / "q2",
                client_id="client-qa",
                queue_size=2,
                is_testing=True,
                **FAST,
            ),
        },
        "loggers": {
            "dc.shop": {"handlers": ["hamustro"], "level": "INFO", "propagate": False},
            "dc.qa": {"handlers": ["qa"], "level": "INFO", "propagate": False},
        },
    }
    records: list[logging.LogRecord] = []

    def capture(record: logging.LogRecord) -> bool:
        records.append(record)
        return True

    logging.config.dictConfig(config)
    shop = logging.getLogger("dc.shop")
    try:
        (handler,) = configured_handlers("dc.shop")
        assert handler.level == logging.INFO
        shop.addFilter(capture)
        params = [{"plan": "pro", "n": 1}, {"city": "Győr", "n": 2}, {"nested": {"a": [1, 2]}}]
        for user_id, p in zip((7, 0, 4294967295), params, strict=True):
            shop.info(
                "order placed", extra={"event": "order.placed", "user_id": user_id, "params": p}
            )
        # queue_size=3 is reached: the handler sends without being flushed.
        events = sorted(collector.wait_for(3), key=lambda e: e["nr"])
        assert [e["nr"] for e in events] == [1, 2, 3]
        for event, record, user_id, p in zip(
            events, records, (7, 0, 4294967295), params, strict=True
        ):
            assert event["event"] == "order.placed"
            assert event["user_id"] == user_id
            assert event["parameters"] == json.dumps(p, separators=(",", ":"), ensure_ascii=False)
            assert event["at"] == int(record.created)
            assert event["at_utc"] == time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(event["at"]))
            assert event["session"] == SESSION == "c3b261989df9cb95efb791759dd37e16"
            assert event["device_id"] == sha256hex("device-1")
            assert event["client_id"] == "client-1"
            assert event["system_version"] == "OS X 10.11"
            assert event["product_version"] == "1.0.0"
            assert event["system"] == platform.system()
            assert event["product_git_hash"] is None
            assert event["is_testing"] is False
            assert event["ip"] == "127.0.0.1"  # detected: the address toward the collector
        assert "Győr" in events[1]["parameters"]  # UTF-8, not \u escapes
        assert abs(events[0]["at"] - time.time()) < 60

        qa = logging.getLogger("dc.qa")
        qa.info("qa run", extra={"event": "qa.default"})
        qa.info("qa run", extra={"event": "qa.override", "is_testing": False})
        qa_events = [e for e in collector.wait_for(5) if e["client_id"] == "client-qa"]
        by_name = {e["event"]: e for e in qa_events}
        assert by_name["qa.default"]["is_testing"] is True
        assert by_name["qa.override"]["is_testing"] is False
        assert by_name["qa.default"]["session"] == session_id(
            sha256hex("device-1"), "client-qa", "OS X 10.11", "1.0.0"
        )
        assert handler.flush() is True
        assert handler.stats()["sent"] == 3
        assert handler.stats()["queued"] == 3
    finally:
        shop.removeFilter(capture)
        unconfigure("dc.shop", "dc.qa")


# -- 2. records without an event ------------------------------------------------


def test_records_without_event_are_ignored(
    collector: DevCollector, make_handler: MakeHandler, attach: Attach, tmp_path: Path
) -> None:
    handler = make_handler(collector.url)
    log = attach("plain.app", handler)
    log.info("a plain line")
    log.warning("with %s args", "two")
    log.error("extra without event", extra={"user_id": 7, "params": {"a": 1}})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("an exception log")

    assert handler.flush() is True
    stats = handler.stats()
    assert stats["queued"] == 0
    assert stats["pending"] == 0
    assert stats["dropped"] == {}
    assert pending_in(tmp_path / "q") == 0
    assert collector.events() == []
    assert collector.answered() == {}  # not even an empty request

    # The same wiring does carry an event: the silence above was the filter.
    log.info("control", extra={"event": "control"})
    assert handler.flush() is True
    assert [e["event"] for e in collector.events()] == ["control"]


# -- 3. bad records next to good ones -------------------------------------------

BAD_RECORDS: list[tuple[dict[str, Any], str, str]] = [
    # (extra, field named in the line, type of the value named in the line)
    ({"event": "e", "user_id": "seven"}, "user_id", "str"),
    ({"event": "e", "user_id": -1}, "user_id", "int"),
    ({"event": ""}, "event", "str"),
    ({"event": "e", "params": 5}, "params", "int"),
    ({"event": "e", "is_testing": "yes"}, "is_testing", "str"),
    ({"event": "e", "ip": 5}, "ip", "int"),
    ({"event": "e", "ip": "not-an-ip"}, "ip", "str"),
    ({"event": "bad \ud800 name"}, "event", "str"),
]


def test_bad_records_are_reported_once_each_and_good_ones_arrive(
    collector: DevCollector,
    make_handler: MakeHandler,
    attach: Attach,
    capsys: pytest.CaptureFixture[str],
) -> None:
    handler = make_handler(collector.url, queue_size=1000)
    attach("shop", handler)
    for i, (extra, _, _) in enumerate(BAD_RECORDS):
        logging.getLogger(f"shop.bad{i}").info("good", extra={"event": "good", "user_id": i})
        logging.getLogger(f"shop.bad{i}").info("bad", extra=extra)
    weird = object()
    logging.getLogger("shop").info("x", extra={"event": "not-json", "params": {"x": weird}})
    logging.getLogger("shop").info("last", extra={"event": "good", "user_id": 99})

    # Sent, but False: a record was dropped (a bad field) since the last flush.
    assert handler.flush() is False
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("hamustro-logging: flush(): 0 events")  # the drops, said
    lines = lines[:-1]
    assert len(lines) == len(BAD_RECORDS), lines
    for i, (line, (_, field, type_name)) in enumerate(zip(lines, BAD_RECORDS, strict=True)):
        assert line.startswith("hamustro-logging: ")
        assert f"'shop.bad{i}'" in line
        assert f"'{field}'" in line
        assert re.search(rf"\b{type_name}\b", line), line

    stats = handler.stats()
    assert stats["dropped"] == {"invalid": len(BAD_RECORDS)}
    assert stats["queued"] == len(BAD_RECORDS) + 2
    events = collector.events()
    goods = sorted(e["user_id"] for e in events if e["event"] == "good")
    assert goods == [*range(len(BAD_RECORDS)), 99]
    (accepted,) = [e for e in events if e["event"] == "not-json"]
    assert accepted["parameters"] == json.dumps({"x": str(weird)}, separators=(",", ":"))
    assert len(events) == len(BAD_RECORDS) + 2


# -- 4. dictConfig with bad settings ---------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [("queue_size", 0), ("queue_size", "x"), ("queue_retention", -1), ("unknown_option", 1)],
)
def test_dictconfig_error_names_the_bad_key(
    secret: str, tmp_path: Path, key: str, value: object
) -> None:
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {
            "hamustro": handler_config("http://127.0.0.1:9", secret, tmp_path / "q", **{key: value})
        },
        "loggers": {"dc.bad": {"handlers": ["hamustro"], "propagate": False}},
    }
    try:
        with pytest.raises(ValueError) as info:
            logging.config.dictConfig(config)
        said = f"{info.value} / {info.value.__cause__}"
        assert key in said
        assert secret not in said
        assert configured_handlers("dc.bad") == []
    finally:
        unconfigure("dc.bad")


FAILED_CONFIG_SCRIPT = """
import logging.config, sys
try:
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"h": {
            "class": "hamustro_logging.HamustroHandler",
            "collector_url": "http://127.0.0.1:9", "shared_secret_key": "secret",
            "device_id": "d", "client_id": "c", "system_version": "1",
            "product_version": "1", "queue_dir": sys.argv[1], "queue_size": 0,
        }},
        "root": {"handlers": ["h"]},
    })
except ValueError as exc:
    kept = exc  # an app that keeps the error to report it later, then runs on
print("fell back to defaults", flush=True)
"""


def test_failed_construction_leaves_nothing_for_shutdown_to_trip_on(tmp_path: Path) -> None:
    # Regression: a handler whose __init__ raised after logging.Handler.__init__
    # stayed registered; logging.shutdown() at exit then hit AttributeError in flush().
    script = tmp_path / "failed_config.py"
    script.write_text(FAILED_CONFIG_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "q")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0
    assert "fell back" in done.stdout
    assert "Traceback" not in done.stderr, done.stderr


# -- 5. the library's own loggers and its HTTP stack -----------------------------


def test_records_from_http_stack_and_own_loggers_are_never_queued(
    collector: DevCollector, make_handler: MakeHandler, tmp_path: Path
) -> None:
    handler = make_handler(collector.url, queue_size=1000)
    seen: list[str] = []

    def count(record: logging.LogRecord) -> bool:
        seen.append(record.name)
        return True

    handler.addFilter(count)
    root = logging.getLogger()
    root.addHandler(handler)  # the conftest fixture restores the root logger
    root.setLevel(logging.INFO)
    blocked = ["urllib3.connectionpool", "urllib3", "requests", "hamustro_logging.x"]
    allowed = ["requests_toolbelt", "urllib3x.pool", "app.hamustro_logging"]
    saved = {name: logging.getLogger(name).disabled for name in blocked + allowed}
    try:
        for name in blocked + allowed:
            logging.getLogger(name).disabled = False  # another test's dictConfig may have
            logging.getLogger(name).warning("x", extra={"event": f"from {name}"})
        assert sorted(seen) == sorted(blocked + allowed)  # every record reached the handler
        assert handler.flush() is True
        assert handler.stats()["queued"] == len(allowed)
        received = sorted(e["event"] for e in collector.events())
        assert received == sorted(f"from {name}" for name in allowed)
    finally:
        root.removeHandler(handler)
        for name, disabled in saved.items():
            logging.getLogger(name).disabled = disabled


# -- 6. durable mode -------------------------------------------------------------


def test_durable_event_is_on_disk_when_emit_returns(
    make_handler: MakeHandler, attach: Attach, tmp_path: Path
) -> None:
    handler = make_handler(dead_url(), durable=True)
    log = attach("durable.app", handler)
    log.info("paid", extra={"event": "paid", "user_id": 1})
    # In the journal file, synced, before emit returned (no wait for a thread).
    assert journal_events(tmp_path / "q") == 1
    assert handler.flush(timeout=0.5) is False
    handler.close()
    assert pending_in(tmp_path / "q") == 1  # stored once, not again by the spool thread


# -- 7. a dead collector ---------------------------------------------------------


def test_dead_collector_keeps_everything_for_the_next_start(
    collector: DevCollector, make_handler: MakeHandler, attach: Attach, tmp_path: Path
) -> None:
    url = dead_url()
    dead = make_handler(url)
    log = attach("dead.app", dead)
    for i in range(200):
        log.info("e", extra={"event": "dead.e", "params": {"i": i}})
    assert dead.flush(timeout=2) is False
    stats = dead.stats()
    assert stats["pending"] == 200
    assert stats["failed_attempts"] >= 1
    assert "collector running" in stats["last_error"]
    started = time.monotonic()
    dead.close()
    assert time.monotonic() - started < 10
    assert pending_in(tmp_path / "q") == 200

    with collector_at(url) as revived:  # the collector comes back at its URL
        live = make_handler(url)
        assert live.flush(timeout=10) is True
        events = revived.wait_for(200)
        assert sorted(keys(events)) == [(SESSION, nr) for nr in range(1, 201)]  # exactly once
        assert sorted(json.loads(e["parameters"])["i"] for e in events) == list(range(200))
        assert live.stats()["pending"] == 0


# -- 8. a hanging collector ------------------------------------------------------


def test_hanging_collector_does_not_block_emit_or_close(
    collector: DevCollector, make_handler: MakeHandler, attach: Attach, tmp_path: Path
) -> None:
    collector.hang_next(1, seconds=60)
    close_timeout = 2.0
    handler = make_handler(collector.url, timeout=(1, 2), queue_size=1, close_timeout=close_timeout)
    log = attach("hang.app", handler)
    log.info("first", extra={"event": "hang.first"})
    # The send thread is stuck once the first event is claimed (leased) for its POST.
    queue = Queue(tmp_path / "q")
    try:
        deadline = time.monotonic() + 10
        while not any(s.leased for s in queue.sessions()):
            assert time.monotonic() < deadline, "the first event was never sent"
            time.sleep(0.01)
    finally:
        queue.close()

    for i in range(100):
        log.info("more", extra={"event": "hang.more", "params": {"i": i}})
    # The hung POST has not even timed out (its read timeout is 2 s): the
    # emits did not wait for it.
    assert handler.stats()["failed_attempts"] == 0

    started = time.monotonic()
    handler.close()
    took = time.monotonic() - started
    # close_timeout, and as much again for the threads to stop (a close that
    # waited two close_timeouts or more fails).
    assert took < 2 * close_timeout, f"close() took {took:.1f} s"
    assert handler.stats()["dropped"] == {}
    assert pending_in(tmp_path / "q") == 101  # nothing lost: all on disk
    assert collector.events() == []


# -- 9. a flaky collector --------------------------------------------------------


def test_flaky_collector_loses_nothing(
    collector: DevCollector, make_handler: MakeHandler, attach: Attach
) -> None:
    collector.fail_next(2, 500)
    collector.drop_next(1)
    collector.fail_next(1, 503, retry_after="1")
    handler = make_handler(collector.url, queue_size=5)
    log = attach("flaky.app", handler)
    for i in range(20):
        log.info("e", extra={"event": "flaky", "params": {"i": i}})
    collector.wait_for(20, timeout=30)
    answered = collector.answered()
    assert answered[500] == 2
    assert answered[503] == 1
    assert answered[200] >= 1
    assert handler.flush(timeout=10) is True
    assert handler.stats()["failed_attempts"] >= 4
    # Each event once: none of the failures stored anything (a dropped
    # connection is closed before the collector stores), so none is sent twice.
    assert sorted(keys(collector.events())) == [(SESSION, nr) for nr in range(1, 21)]


def test_answer_lost_after_storing_may_duplicate_but_never_loses(
    collector: DevCollector, make_handler: MakeHandler, attach: Attach
) -> None:
    collector.accept_then_drop_next(1)
    handler = make_handler(collector.url, queue_size=1000)
    log = attach("dup.app", handler)
    for i in range(5):
        log.info("e", extra={"event": "dup", "params": {"i": i}})
    assert handler.flush(timeout=10) is False  # stored, but the answer never came
    assert handler.flush(timeout=10) is True
    events = collector.events()
    # The unanswered batch was sent again: twice each, counted below.
    assert sorted(keys(events)) == sorted([(SESSION, nr) for nr in range(1, 6)] * 2)
    stats = handler.stats()
    assert stats["pending"] == 0
    assert stats["sent"] == 5
    assert stats["resent"] == 5  # counted: the collector may hold these twice


# -- 10. a wrong secret ----------------------------------------------------------

WRONG_SECRET = "wrong-secret-d41d8cd9"  # noqa: S105 -- a test value, not a credential


def test_wrong_secret_is_reported_once_and_never_shown(
    collector: DevCollector,
    make_handler: MakeHandler,
    attach: Attach,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    handler = make_handler(collector.url, shared_secret_key=WRONG_SECRET, queue_size=1000)
    log = attach("secret.app", handler)
    for i in range(5):
        log.info("e", extra={"event": "s", "user_id": i})
    for _ in range(3):  # three forced attempts, one streak
        assert handler.flush(timeout=5) is False
    assert collector.answered() == {405: 3}
    assert collector.events() == []

    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "shared_secret_key" in line]
    assert len(lines) == 1, err
    assert "405" in lines[0]
    stats = handler.stats()
    assert stats["pending"] == 5
    assert stats["failed_attempts"] == 3

    errors: list[BaseException] = []
    for bad in ({"queue_size": 0}, {"device_id": ""}, {"timeout": "x"}):
        try:
            make_handler(collector.url, tmp_path / "other", shared_secret_key=WRONG_SECRET, **bad)
        except (TypeError, ValueError) as exc:
            errors.append(exc)
    assert len(errors) == 3
    shown = [err, repr(handler), str(handler), repr(handler.tracker), str(stats)]
    shown += [str(e) for e in errors] + [repr(e) for e in errors]
    for text in shown:
        assert WRONG_SECRET not in text


def test_wrong_secret_streak_is_one_line_even_as_the_backlog_grows(
    collector: DevCollector,
    make_handler: MakeHandler,
    attach: Attach,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Regression: the line embedded the batch size and the jittered delay, so
    # each retry looked like a new cause and printed a line of its own.
    # The library's default backoff (cap 300 s), as an application would run it.
    handler = make_handler(
        collector.url,
        shared_secret_key=WRONG_SECRET,
        queue_size=1000,
        backoff_base=1.0,
        backoff_cap=300.0,
    )
    log = attach("streak.app", handler)
    for i in range(3):
        log.info("e", extra={"event": "s", "user_id": i})
        assert handler.flush(timeout=5) is False
    assert collector.answered() == {405: 3}
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if "shared_secret_key" in line]) == 1, err


# -- 11. flush, close and logging.shutdown send now ------------------------------

NEVER_DUE: dict[str, int] = {"queue_size": 10**6, "queue_retention": 10**6}


def test_flush_sends_now_without_a_trigger(
    collector: DevCollector, make_handler: MakeHandler, attach: Attach
) -> None:
    handler = make_handler(collector.url, **NEVER_DUE)
    log = attach("flush.app", handler)
    for i in range(50):
        log.info("e", extra={"event": "flushed", "user_id": i})
    assert handler.flush() is True
    assert sorted(e["user_id"] for e in collector.events()) == list(range(50))
    assert handler.stats()["sent"] == 50


def test_close_drains(collector: DevCollector, make_handler: MakeHandler, attach: Attach) -> None:
    handler = make_handler(collector.url, **NEVER_DUE)
    log = attach("close.app", handler)
    for i in range(50):
        log.info("e", extra={"event": "closed", "user_id": i})
    handler.close()
    assert sorted(e["user_id"] for e in collector.events()) == list(range(50))
    assert not [t for t in threading.enumerate() if t.name.startswith(f"hamustro-{id(handler):x}")]
    assert handler.flush() is False  # closed: nothing more to do, and says so


def test_logging_shutdown_drains(
    collector: DevCollector, make_handler: MakeHandler, attach: Attach, tmp_path: Path
) -> None:
    handler = make_handler(collector.url, **NEVER_DUE)
    log = attach("shutdown.app", handler)
    for i in range(50):
        log.info("e", extra={"event": "shutdown", "user_id": i})
    logging.shutdown()  # what atexit runs: flush() then close() on every handler
    assert sorted(e["user_id"] for e in collector.events()) == list(range(50))
    assert pending_in(tmp_path / "q") == 0


# -- 12. map_record override -----------------------------------------------------


class MessageNamedHandler(HamustroHandler):
    """Tracks records whose message starts with "track:"; every extra goes to params."""

    def map_record(self, record: logging.LogRecord) -> Event | None:
        if not isinstance(record.msg, str) or not record.msg.startswith("track:"):
            return None
        extra = extra_attributes(record)
        user_id = extra.pop("user_id", None)
        return build_event(
            record.msg.removeprefix("track:"),
            user_id=user_id,
            params=extra or None,
            is_testing=self.is_testing,
            at=record.created,
        )


def test_map_record_override(
    collector: DevCollector,
    make_handler: MakeHandler,
    attach: Attach,
    capsys: pytest.CaptureFixture[str],
) -> None:
    handler = make_handler(collector.url, cls=MessageNamedHandler, queue_size=1000)
    log = attach("custom.app", handler)
    log.info("track:signup", extra={"user_id": 5, "plan": "pro"})
    log.info("not tracked", extra={"event": "ignored"})  # the override decides, not `event`
    log.info("track:bad", extra={"user_id": "five"})
    # Sent, but False: a record was dropped (a bad field) since the last flush.
    assert handler.flush() is False
    (event,) = collector.events()
    assert event["event"] == "signup"
    assert event["user_id"] == 5
    assert event["parameters"] == '{"plan":"pro"}'
    assert handler.stats()["dropped"] == {"invalid": 1}
    assert "'user_id'" in capsys.readouterr().err


# -- 13. two handlers, two folders, two sets of threads --------------------------


def test_two_handlers_each_own_threads_and_queue(
    collector: DevCollector, make_handler: MakeHandler, attach: Attach, tmp_path: Path
) -> None:
    first = make_handler(collector.url, tmp_path / "a", client_id="client-a")
    second = make_handler(collector.url, tmp_path / "b", client_id="client-b")
    senders = {t for t in threading.enumerate() if t.name.endswith("-send")}
    first_sender = {t for t in senders if t.name == f"hamustro-{id(first):x}-send"}
    second_sender = {t for t in senders if t.name == f"hamustro-{id(second):x}-send"}
    assert len(first_sender) == len(second_sender) == 1
    assert first_sender != second_sender

    log_b = attach("two.b", second)
    attach("two.a", first).info("a", extra={"event": "from-a"})
    log_b.info("b", extra={"event": "from-b"})
    assert first.flush() is True
    assert second.flush() is True
    events = collector.wait_for(2)
    assert sorted((e["client_id"], e["event"]) for e in events) == [
        ("client-a", "from-a"),
        ("client-b", "from-b"),
    ]

    first.close()  # stops only its own threads
    assert not any(t.is_alive() for t in first_sender)
    assert all(t.is_alive() for t in second_sender)
    log_b.info("b", extra={"event": "from-b-again"})
    assert second.flush() is True
    assert collector.wait_for(3)[-1]["event"] == "from-b-again"


# -- 14. a producer faster than the disk (on_full) --------------------------------


def test_on_full_must_be_wait_or_drop(
    make_handler: MakeHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="on_full must be 'wait' or 'drop', got 'block'"):
        make_handler(dead_url(), on_full="block")
    monkeypatch.setenv("HAMUSTRO_ON_FULL", "later")
    with pytest.raises(ValueError, match="on_full must be 'wait' or 'drop', got 'later'"):
        make_handler(dead_url())
    monkeypatch.setenv("HAMUSTRO_ON_FULL", "drop")
    assert make_handler(dead_url()).on_full == "drop"


def test_producer_faster_than_the_disk_waits_and_loses_nothing(
    collector: DevCollector, make_handler: MakeHandler, attach: Attach
) -> None:
    # A buffer of 50 fills at once: every emit past it waits for the spool thread.
    handler = make_handler(collector.url, max_buffer=50, **NEVER_DUE)
    log = attach("fast.app", handler)
    n = 20_000
    for i in range(n):
        log.info("e", extra={"event": "fast", "params": {"i": i}})
    assert handler.stats()["dropped"] == {}
    assert handler.flush(timeout=60) is True
    events = collector.wait_for(n, timeout=30)
    assert sorted(json.loads(e["parameters"])["i"] for e in events) == list(range(n))


# -- 15. flush() answers for this handler's events ---------------------------------

HOLD_A_BATCH = """
import json, logging, sys, time
from hamustro_logging import HamustroHandler

handler = HamustroHandler(**json.loads(sys.argv[1]))
log = logging.getLogger("other")
log.addHandler(handler)
log.propagate = False
log.warning("e", extra={"event": "theirs"})  # queue_size=1: sent at once, to a collector that hangs
queue = handler.tracker.queue
deadline = time.monotonic() + 10
while not any(s.leased for s in queue.sessions()):
    assert time.monotonic() < deadline, "never sent"
    time.sleep(0.01)
print("posting", flush=True)
sys.stdin.read()
"""


def test_flush_is_true_when_ours_are_delivered_though_another_process_has_pending(
    collector: DevCollector, make_handler: MakeHandler, attach: Attach, tmp_path: Path, secret: str
) -> None:
    with DevCollector(secret=secret, output=io.StringIO()) as hanging:
        hanging.hang_next(10, seconds=30)
        theirs = {
            **IDENTITY,
            "client_id": "another-app",  # another session, in the same folder
            "collector_url": hanging.url,
            "shared_secret_key": secret,
            "queue_dir": str(tmp_path / "q"),
            "queue_size": 1,
            "timeout": [1, 20],
            "close_timeout": 0.1,
        }
        other = subprocess.Popen(
            [sys.executable, "-c", HOLD_A_BATCH, json.dumps(theirs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert other.stdout is not None
            assert other.stdout.readline().strip() == "posting"
            handler = make_handler(collector.url, **NEVER_DUE)
            log = attach("ours.app", handler)
            for i in range(5):
                log.info("e", extra={"event": "ours", "user_id": i})
            assert handler.flush(timeout=10) is True
            assert handler.stats()["pending"] == 1  # theirs, leased by the other process
            assert sorted(e["user_id"] for e in collector.events()) == list(range(5))
            log.info("e", extra={"event": "ours", "user_id": 5})
            assert handler.flush(timeout=10) is True
        finally:
            other.kill()
            other.communicate(timeout=10)
