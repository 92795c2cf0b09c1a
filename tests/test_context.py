"""``hamustro_logging.context()``: fields for every event of a block, a request or a task.

Every event goes through a real handler to the development collector on
loopback (schema 1 and schema 2), as an app's would.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hamustro_logging
from hamustro_logging import HamustroHandler, context, current_context
from hamustro_logging.collector import DevCollector

from .support import TEST_SECRET, tracker_config


@pytest.fixture
def collector2() -> Iterator[DevCollector]:
    """A started development collector speaking schema 2."""
    with DevCollector(secret=TEST_SECRET, output=io.StringIO(), schema=2) as running:
        yield running


class Sending:
    """A handler on a logger of the test's own, against a collector."""

    def __init__(self, collector: DevCollector, queue_dir: Path, **options: Any) -> None:
        self.collector = collector
        self.handler = HamustroHandler(**tracker_config(collector, queue_dir, **options))
        self.log = logging.getLogger(f"tests.context.{id(self)}")
        self.log.propagate = False
        self.log.setLevel(logging.INFO)
        self.log.addHandler(self.handler)

    def event(self, name: str, **extra: Any) -> None:
        self.log.info(name, extra={"event": name, **extra})

    def received(self, count: int, dropped: bool = False) -> dict[str, dict[str, Any]]:
        """Flush, then the ``count`` events at the collector by name.

        ``flush()`` is False after a dropped event (``dropped``), else True.
        """
        assert self.handler.flush(timeout=10) is not dropped
        return {e["event"]: e for e in self.collector.wait_for(count)}

    def close(self) -> None:
        self.log.removeHandler(self.handler)
        self.handler.close()


@pytest.fixture
def sending(collector: DevCollector, tmp_path: Path) -> Iterator[Sending]:
    s = Sending(collector, tmp_path / "q")
    yield s
    s.close()


@pytest.fixture
def sending2(collector2: DevCollector, tmp_path: Path) -> Iterator[Sending]:
    s = Sending(collector2, tmp_path / "q", schema=2, env="beta")
    yield s
    s.close()


def test_context_is_exported() -> None:
    assert "context" in hamustro_logging.__all__ and "current_context" in hamustro_logging.__all__
    assert hamustro_logging.context is context


# -- the fields and their precedence ----------------------------------------------------


def test_fields_reach_every_event_inside_and_none_outside(sending: Sending) -> None:
    with context(user_id=7, params={"plan": "pro"}):
        sending.event("inside")
        sending.event("own_params", params={"total": 12, "plan": "free"})
        sending.event("own_user", user_id=8)
    sending.event("outside")
    got = sending.received(4)
    assert (got["inside"]["user_id"], got["inside"]["parameters"]) == (7, '{"plan":"pro"}')
    # the record's params merge over the context's, key by key; its own wins
    assert got["own_params"]["parameters"] == '{"plan":"free","total":12}'
    assert (got["own_user"]["user_id"], got["own_user"]["parameters"]) == (8, '{"plan":"pro"}')
    assert (got["outside"]["user_id"], got["outside"]["parameters"]) == (None, None)


def test_nested_contexts_merge_and_the_inner_one_wins(sending: Sending) -> None:
    with context(user_id=7, params={"plan": "pro", "seats": 3}):
        with context(user_id=9, params={"plan": "team"}):
            sending.event("inner")
        sending.event("outer_again")
    got = sending.received(2)
    assert got["inner"]["user_id"] == 9
    assert got["inner"]["parameters"] == '{"plan":"team","seats":3}'
    assert (got["outer_again"]["user_id"], got["outer_again"]["parameters"]) == (
        7, '{"plan":"pro","seats":3}',
    )  # fmt: skip


def test_a_record_without_a_dict_params_replaces_the_contexts(sending: Sending) -> None:
    with context(params={"plan": "pro"}, is_testing=True):
        sending.event("text_params", params="plan=free")
        sending.event("own_testing", is_testing=False)
    got = sending.received(2)
    assert (got["text_params"]["parameters"], got["text_params"]["is_testing"]) == (
        "plan=free", True,
    )  # fmt: skip
    assert got["own_testing"]["is_testing"] is False


def test_schema2_context_wins_over_set_user_and_the_handler_options(
    collector2: DevCollector, tmp_path: Path
) -> None:
    s = Sending(collector2, tmp_path / "q", schema=2, env="beta", tenant_id="opt-t", user_id="opt")
    try:
        s.handler.tracker.set_user("stored-t", "stored")
        with context(user_id="ctx", params={"plan": "pro"}, country="HU"):
            s.event("context_user")
            s.event("own_user", user_id="own", tenant_id="own-t")
        with context(tenant_id="ctx-t"):
            s.event("context_tenant")
        s.event("stored_user")
        got = s.received(4)
    finally:
        s.close()
    user = {name: (e["tenant_id"], e["user_id"]) for name, e in got.items()}
    assert user == {
        "context_user": ("stored-t", "ctx"),
        "own_user": ("own-t", "own"),
        "context_tenant": ("ctx-t", "stored"),
        "stored_user": ("stored-t", "stored"),
    }
    assert got["context_user"]["parameters"] == '{"plan":"pro"}'
    assert got["context_user"]["country"] == "HU"


def test_schema2_context_wins_over_the_handler_options(
    collector2: DevCollector, tmp_path: Path
) -> None:
    s = Sending(collector2, tmp_path / "q", schema=2, env="beta", tenant_id="opt-t", user_id="opt")
    try:
        with context(user_id=7):  # an int user, as schema 1 apps pass it
            s.event("context_user")
        s.event("option_user")
        got = s.received(2)
    finally:
        s.close()
    assert (got["context_user"]["tenant_id"], got["context_user"]["user_id"]) == ("opt-t", "7")
    assert (got["option_user"]["tenant_id"], got["option_user"]["user_id"]) == ("opt-t", "opt")


def test_ordinary_lines_stay_ignored_inside_a_context(sending: Sending) -> None:
    with context(user_id=7):
        sending.log.info("a plain line: no event")
        sending.event("one")
    assert list(sending.received(1)) == ["one"]
    assert sending.handler.stats()["dropped"] == {}


# -- wrong fields: the same as a wrong extra --------------------------------------------


def test_an_unknown_field_is_a_type_error_at_once() -> None:
    with pytest.raises(TypeError, match=r"^context\(\) got an unknown field 'event'; it takes"):
        context(event="signup")
    with pytest.raises(TypeError, match="unknown field 'user'"):
        context(user=7)


def test_a_bad_value_drops_each_event_like_a_bad_extra_and_never_raises(
    sending: Sending, capsys: pytest.CaptureFixture[str]
) -> None:
    with context(user_id="seven"):  # schema 1 takes an int
        sending.event("dropped")
        sending.event("dropped_too")
        sending.event("own_user", user_id=3)  # the record's own user wins: valid
    sending.event("after")
    got = sending.received(2, dropped=True)
    assert set(got) == {"own_user", "after"}
    assert sending.handler.stats()["dropped"] == {"invalid": 2}
    err = capsys.readouterr().err
    assert (
        f"event from logger {sending.log.name!r} not queued: hamustro event field 'user_id': "
        "expected int, got str"
    ) in err


def test_is_testing_in_a_schema2_context_is_refused_as_in_extra(
    sending2: Sending, capsys: pytest.CaptureFixture[str]
) -> None:
    with context(is_testing=True):
        sending2.event("refused")
    sending2.event("kept")
    assert list(sending2.received(1, dropped=True)) == ["kept"]
    assert sending2.handler.stats()["dropped"] == {"invalid": 1}
    assert (
        "hamustro event field 'is_testing': does not exist in schema 2" in capsys.readouterr().err
    )


def test_the_context_keeps_its_own_copy_of_params_and_none_means_not_given(
    sending: Sending,
) -> None:
    params: dict[str, Any] = {"plan": "pro"}
    with context(user_id=7, params=params), context(user_id=None):
        params["plan"] = "changed after"
        sending.event("copy")
    assert (sending.received(1)["copy"]["user_id"], sending.received(1)["copy"]["parameters"]) == (
        7, '{"plan":"pro"}',
    )  # fmt: skip


def test_leaving_by_an_exception_restores_the_outer_fields() -> None:
    with context(user_id=1):
        with pytest.raises(RuntimeError), context(user_id=2):
            assert current_context()["user_id"] == 2
            raise RuntimeError("boom")
        assert dict(current_context()) == {"user_id": 1}
    assert dict(current_context()) == {}


# -- threads, asyncio tasks, the decorator ----------------------------------------------


def test_each_thread_has_its_own_context(sending: Sending) -> None:
    go = threading.Barrier(3)

    def serve(user: int) -> None:
        with context(user_id=user, params={"thread": user}):
            go.wait(timeout=10)  # both threads are inside their own context at once
            sending.event(f"thread_{user}")
            go.wait(timeout=10)

    threads = [threading.Thread(target=serve, args=(u,)) for u in (1, 2)]
    with context(user_id=99):
        for t in threads:
            t.start()
        go.wait(timeout=10)
        sending.event("main")  # the main thread's context, not the threads'
        go.wait(timeout=10)
    for t in threads:
        t.join(timeout=10)
    got = sending.received(3)
    assert {name: e["user_id"] for name, e in got.items()} == {
        "thread_1": 1, "thread_2": 2, "main": 99,
    }  # fmt: skip


def test_each_asyncio_task_has_its_own_context(sending: Sending) -> None:
    async def request(user: int, started: asyncio.Event, other: asyncio.Event) -> None:
        with context(user_id=user):
            started.set()
            await other.wait()  # the other task entered its context meanwhile
            sending.event(f"task_{user}")

    async def main() -> None:
        a, b = asyncio.Event(), asyncio.Event()
        await asyncio.gather(request(1, a, b), request(2, b, a))

    asyncio.run(main())
    got = sending.received(2)
    assert (got["task_1"]["user_id"], got["task_2"]["user_id"]) == (1, 2)


def test_as_a_decorator_on_functions_and_coroutine_functions(sending: Sending) -> None:
    @context(params={"job": "sync"})
    def job(user: int) -> str:
        with context(user_id=user):
            sending.event(f"sync_{user}")
        return "done"

    @context(user_id=5, params={"job": "async"})
    async def ajob(step: int) -> int:
        await asyncio.sleep(0)
        sending.event(f"async_{step}")
        return step

    async def both() -> list[int]:
        return list(await asyncio.gather(ajob(1), ajob(2)))

    assert job(3) == "done" and job.__name__ == "job"
    assert asyncio.run(both()) == [1, 2]
    sending.event("after")
    got = sending.received(4)
    assert (got["sync_3"]["user_id"], got["sync_3"]["parameters"]) == (3, '{"job":"sync"}')
    assert (got["async_1"]["user_id"], got["async_2"]["parameters"]) == (5, '{"job":"async"}')
    assert (got["after"]["user_id"], got["after"]["parameters"]) == (None, None)


# -- structlog ---------------------------------------------------------------------------


def test_structlog_contextvars_and_context_reach_events_through_the_stdlib_bridge(
    collector: DevCollector, tmp_path: Path
) -> None:
    structlog = pytest.importorskip("structlog")
    s = Sending(collector, tmp_path / "q", event_key="track")
    try:
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,  # bind_contextvars' values, first
                structlog.stdlib.add_log_level,
                structlog.stdlib.render_to_log_kwargs,
            ],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=False,
        )
        log = structlog.get_logger(s.log.name)
        structlog.contextvars.bind_contextvars(user_id=7, params={"plan": "pro"})
        log.info("order placed", track="bound")
        log.info("order placed", track="own_params", params={"total": 12})
        structlog.contextvars.clear_contextvars()
        with context(user_id=8, params={"plan": "team"}):
            log.info("order placed", track="hamustro_context", params={"total": 3})
        got = s.received(3)
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
        s.close()
    assert (got["bound"]["user_id"], got["bound"]["parameters"]) == (7, '{"plan":"pro"}')
    # structlog's own rule: a key given in the call replaces the bound one
    assert (got["own_params"]["user_id"], got["own_params"]["parameters"]) == (7, '{"total":12}')
    assert (got["hamustro_context"]["user_id"], got["hamustro_context"]["parameters"]) == (
        8, '{"plan":"team","total":3}',
    )  # fmt: skip


def test_structlog_bound_contextvars_without_merge_contextvars_do_not_reach_events(
    collector: DevCollector, tmp_path: Path
) -> None:
    structlog = pytest.importorskip("structlog")
    s = Sending(collector, tmp_path / "q", event_key="track")
    try:
        structlog.configure(
            processors=[structlog.stdlib.add_log_level, structlog.stdlib.render_to_log_kwargs],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=False,
        )
        structlog.contextvars.bind_contextvars(user_id=7)
        structlog.get_logger(s.log.name).info("order placed", track="unbound")
        got = s.received(1)
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
        s.close()
    assert got["unbound"]["user_id"] is None  # why the docs put merge_contextvars first
