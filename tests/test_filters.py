"""``examples/filters.py``: redaction and per-user sampling as ``logging.Filter`` on the handler.

The filters run on a real handler; what they let through is checked at the
development collector (schema 1 and schema 2).
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from hamustro_logging import HamustroHandler, context
from hamustro_logging.collector import DevCollector

from .support import TEST_SECRET, tracker_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def filters() -> ModuleType:
    spec = importlib.util.spec_from_file_location("filters", ROOT / "examples" / "filters.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Logged:
    """A handler (with the test's filters) on a logger of its own."""

    def __init__(self, collector: DevCollector, queue_dir: Path, **options: Any) -> None:
        self.handler = HamustroHandler(
            **tracker_config(collector, queue_dir, queue_size=10**6, **options)
        )
        self.log = logging.getLogger(f"tests.filters.{id(self)}")
        self.log.propagate = False
        self.log.setLevel(logging.INFO)
        self.log.addHandler(self.handler)
        self.collector = collector

    def received(self, count: int) -> list[dict[str, Any]]:
        assert self.handler.flush(timeout=30)
        events = self.collector.wait_for(count)
        assert len(events) == count
        return sorted(events, key=lambda e: e["nr"])

    def close(self) -> None:
        self.log.removeHandler(self.handler)
        self.handler.close()


@pytest.fixture
def logged(collector: DevCollector, tmp_path: Path) -> Iterator[Logged]:
    s = Logged(collector, tmp_path / "q")
    yield s
    s.close()


# -- redaction ---------------------------------------------------------------------------


def test_redact_params_masks_the_records_and_the_contexts_params(
    filters: ModuleType, logged: Logged
) -> None:
    logged.handler.addFilter(filters.RedactParams({"email", "phone"}))
    params = {"email": "ada@example.com", "plan": "pro"}
    logged.log.info("a", extra={"event": "signup", "params": params})
    with context(params={"email": "ada@example.com", "source": "ad"}):
        logged.log.info("b", extra={"event": "from_context", "params": {"plan": "pro"}})
        logged.log.info("c", extra={"event": "context_only"})
    logged.log.info("d", extra={"event": "text", "params": "email=kept-as-given"})
    other = logging.makeLogRecord({"msg": "plain", "params": {"email": "x"}})
    assert logged.handler.filter(other) and other.__dict__["params"] == {"email": "x"}
    events = logged.received(4)
    assert [json.loads(e["parameters"]) for e in events[:3]] == [
        {"email": "[redacted]", "plan": "pro"},
        {"email": "[redacted]", "source": "ad", "plan": "pro"},
        {"email": "[redacted]", "source": "ad"},
    ]
    assert events[3]["parameters"] == "email=kept-as-given"
    assert params == {"email": "ada@example.com", "plan": "pro"}  # the caller's dict unchanged


def test_redact_params_with_no_mask_leaves_the_pair_out_in_schema_2(
    filters: ModuleType, tmp_path: Path
) -> None:
    with DevCollector(secret=TEST_SECRET, output=io.StringIO(), schema=2) as collector2:
        logged = Logged(collector2, tmp_path / "q", schema=2, env="beta")
        try:
            logged.handler.addFilter(filters.RedactParams({"email"}, mask=None))
            with context(user_id="u-1", params={"email": "ada@example.com"}):
                logged.log.info("a", extra={"event": "signup", "params": {"plan": "pro"}})
            (event,) = logged.received(1)
        finally:
            logged.close()
    assert (event["user_id"], event["parameters"]) == ("u-1", '{"plan":"pro"}')


# -- sampling ----------------------------------------------------------------------------


def test_sample_by_user_keeps_all_or_none_of_each_users_events(
    filters: ModuleType, logged: Logged
) -> None:
    sample = filters.SampleByUser(0.25)
    logged.handler.addFilter(sample)
    users = range(400)
    for user in users:
        logged.log.info("a", extra={"event": "viewed", "user_id": user})
        with context(user_id=user):  # the context's user is sampled the same way
            logged.log.info("b", extra={"event": "bought"})
    logged.log.info("c", extra={"event": "anonymous"})  # no user: kept
    kept = {u for u in users if sample.keeps(u)}
    events = logged.received(2 * len(kept) + 1)
    per_user = Counter(e["user_id"] for e in events if e["event"] != "anonymous")
    assert per_user == dict.fromkeys(kept, 2)  # both events of a kept user, none of the others
    assert 0.15 < len(kept) / len(users) < 0.35  # about the rate (a fixed set: no chance here)
    assert [e["event"] for e in events if e["user_id"] is None] == ["anonymous"]


def test_sample_by_user_keeps_the_same_users_in_every_process(filters: ModuleType) -> None:
    sample = filters.SampleByUser(0.5, salt="shop")
    here = [u for u in range(300) if sample.keeps(u)]
    script = (
        "import importlib.util, json, sys\n"
        "spec = importlib.util.spec_from_file_location('filters', sys.argv[1])\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "s = m.SampleByUser(0.5, salt='shop')\n"
        "print(json.dumps([u for u in range(300) if s.keeps(str(u))]))\n"
    )
    for seed in ("1", "2"):  # str hashes differ between these two processes
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", script, str(ROOT / "examples" / "filters.py")],
            capture_output=True, text=True, env=env, timeout=60, check=True,
        )  # fmt: skip
        assert json.loads(done.stdout) == here  # and "7" is the same user as 7
    assert 0 < len(here) < 300
    other = filters.SampleByUser(0.5, salt="other")
    assert [u for u in range(300) if other.keeps(u)] != here  # another salt, another set
    assert not any(filters.SampleByUser(0.0).keeps(u) for u in range(100))
    assert all(filters.SampleByUser(1.0).keeps(u) for u in range(100))
    with pytest.raises(ValueError, match=r"rate must be in 0\.\.1"):
        filters.SampleByUser(1.5)
