"""The reliability tests that matter for the wire, with schema 2.

The smallest version of each: SIGKILL with a dead collector and with a POST
in flight (test_crash_fork.py), four processes on one folder, also through
errors (test_multiprocess.py), and a 400 bisected down to the one refused
event (test_refusals.py). Every collector here speaks schema 2 and refuses
schema 1 with 400, so a frame or header of the wrong schema would show.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import diskcache
import pytest

from hamustro_logging import ClientTracker, HamustroHandler
from hamustro_logging.collector import DevCollector
from hamustro_logging.queue import SafeDisk
from hamustro_logging.wire import iter_frames, varint

from ..support import assert_ledger_adds_up, pending_in, tracker_config
from .test_crash_fork import (
    KILL_WHILE_POSTING,
    KILL_WHILE_WAITING,
    Script,
    handler_options,
    kill9,
    once_or_counted,
    wait_for_line,
)
from .test_crash_fork import script as script  # the fixture, used by name
from .test_multiprocess import WORKER, finish, start

#: collector.md's vector: the test identity's session with env BETA.
SESSION_BETA = "305b8e19b4fb1c42b4adffaa373aa046"
SCHEMA2 = {"schema": 2, "env": "beta"}
WORKERS, EVENTS_PER_WORKER = 4, 500


@pytest.fixture
def collector2(secret: str) -> Iterator[DevCollector]:
    with DevCollector(secret=secret, output=io.StringIO(), schema=2) as running:
        yield running


def numbers(events: list[dict[str, Any]]) -> list[int]:
    assert {e["session"] for e in events} == {SESSION_BETA}
    assert {e["env"] for e in events} == {"BETA"}
    return sorted(e["nr"] for e in events)


# -- SIGKILL -----------------------------------------------------------------------------


def test_sigkill_while_collector_is_dead_loses_nothing(
    secret: str,
    tmp_path: Path,
    script: Script,
) -> None:
    queue_dir = tmp_path / "q"
    with DevCollector(secret=secret, output=io.StringIO(), schema=2) as probe:
        url = probe.url  # a port that was free; nothing listens once it stopped
    dead = handler_options(url, secret, queue_dir, timeout=(0.5, 0.5), **SCHEMA2)
    proc = script.start(KILL_WHILE_WAITING, {"handler": dead, "n": 500})
    wait_for_line(proc, "ready")
    kill9(proc)
    assert pending_in(queue_dir) == 500  # all on disk when the process died

    port = int(url.rsplit(":", 1)[1])
    with DevCollector(port=port, secret=secret, output=io.StringIO(), schema=2) as collector:
        handler = HamustroHandler(**handler_options(url, secret, queue_dir, **SCHEMA2))
        try:
            handler.flush(timeout=10)
            events = collector.wait_for(500, timeout=30)
        finally:
            handler.close()
        assert collector.answered().get(400, 0) == 0
    assert numbers(events) == list(range(1, 501))  # exactly once
    assert sorted(int(json.loads(e["parameters"])["i"]) for e in events) == list(range(500))
    assert pending_in(queue_dir) == 0


def test_sigkill_while_posting_loses_nothing(
    collector2: DevCollector,
    secret: str,
    tmp_path: Path,
    script: Script,
) -> None:
    collector2.hang_next(1, seconds=30)
    queue_dir = tmp_path / "q"
    options = handler_options(
        collector2.url, secret, queue_dir, queue_size=1, timeout=(0.5, 2), **SCHEMA2
    )
    proc = script.start(KILL_WHILE_POSTING, {"handler": options, "n": 10})
    wait_for_line(proc, "ready")
    kill9(proc)
    assert pending_in(queue_dir) == 10

    handler = HamustroHandler(**options)
    try:
        assert handler.flush(timeout=10) is True  # within 10 s: far less than the lease
        collector2.wait_for(10, timeout=10)
        resent = handler.stats()["resent"]
    finally:
        handler.close()
    assert once_or_counted(collector2.events(), 10, resent)
    assert resent == 1


# -- several processes on one folder -----------------------------------------------------

#: test_multiprocess.py's worker, with schema 2 (its int user_id goes as a decimal string).
WORKER_V2 = WORKER.replace(
    "queue_dir=queue_dir, queue_size=50,",
    'queue_dir=queue_dir, queue_size=50, schema=2, env="beta",',
)
assert WORKER_V2 != WORKER


def run_workers(collector: DevCollector, tmp_path: Path, drain: bool) -> None:
    script_path = tmp_path / "worker.py"
    script_path.write_text(WORKER_V2)
    queue_dir = str(tmp_path / "q")
    mode = "drain" if drain else "plain"
    procs = [start(script_path, collector.url, queue_dir, str(w), mode) for w in range(WORKERS)]
    (tmp_path / "go").touch()
    for proc in procs:
        _, err = finish(proc, timeout=60)
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err


def assert_each_event_exactly_once(events: list[dict[str, Any]]) -> None:
    total = WORKERS * EVENTS_PER_WORKER
    keys = Counter((e["session"], e["nr"]) for e in events)
    twice = sorted(k for k, n in keys.items() if n > 1)
    assert twice == [], f"sent more than once: {twice[:10]}"
    assert sorted(keys) == [(SESSION_BETA, nr) for nr in range(1, total + 1)]
    expected = sorted(w * 1000 + i for w in range(WORKERS) for i in range(EVENTS_PER_WORKER))
    assert all(isinstance(e["user_id"], str) for e in events)
    assert sorted(int(e["user_id"]) for e in events) == expected


def test_four_processes_on_one_folder_send_each_event_once(
    collector2: DevCollector, tmp_path: Path
) -> None:
    run_workers(collector2, tmp_path, drain=False)
    events = collector2.events()
    assert len(events) == WORKERS * EVENTS_PER_WORKER
    assert_each_event_exactly_once(events)
    assert pending_in(tmp_path / "q") == 0


def test_four_processes_through_errors_and_drops_lose_nothing_and_duplicate_nothing(
    collector2: DevCollector, tmp_path: Path
) -> None:
    collector2.fail_next(10, 500)
    collector2.drop_next(3)
    run_workers(collector2, tmp_path, drain=True)
    assert collector2.answered()[500] == 10
    assert_each_event_exactly_once(collector2.events())
    assert pending_in(tmp_path / "q") == 0


# -- 400: bisected into the rejected area ------------------------------------------------


def break_event_v2(queue_dir: Path, nr: int) -> None:
    """Replace stored event ``nr`` with a schema-2 payload that lacks its required ``nr``."""
    cache = diskcache.Cache(str(queue_dir), disk=SafeDisk)
    for key in list(cache.iterkeys()):
        if not key.startswith("e/"):
            continue
        first, count = (int(part) for part in key.split("/")[3:])
        if first <= nr < first + count:
            frames = list(iter_frames(cache.get(key)))
            assert all(frame[0] == 0x7A for frame in frames)  # schema 2's frames
            body = b"\x08" + varint(1_700_000_000) + b"\x12\x03bad"
            frames[nr - first] = b"\x7a" + varint(len(body)) + body
            cache.set(key, b"".join(frames))
    cache.close()


def test_a_refused_event_is_set_aside_and_the_rest_delivered(
    tmp_path: Path, collector2: DevCollector, capfd: pytest.CaptureFixture[str]
) -> None:
    config = tracker_config(collector2, tmp_path, queue_size=10**6, **SCHEMA2)
    with ClientTracker(**config) as t:
        t.set_user("acme", "u-1")
        for i in range(9):
            t.track_event("e", {"i": i})
        break_event_v2(tmp_path, 4)
        assert t.flush() is True  # nothing pending: 8 delivered, 1 set aside
        stats = t.stats()
        assert (stats["pending"], stats["rejected_in_queue"], stats["rejected"]) == (0, 1, 1)
        events = collector2.events()
        assert numbers(events) == [1, 2, 3, 5, 6, 7, 8, 9]
        assert {(e["tenant_id"], e["user_id"]) for e in events} == {("acme", "u-1")}
        assert collector2.answered()[400] >= 2  # the whole batch, then halves
        err = capfd.readouterr().err
        assert "refused 1 events" in err and "nr 4" in err and "rejected area" in err
        assert t.queue.retry_rejected() == 1
        assert t.flush() is True
        assert t.stats()["rejected_in_queue"] == 1
    assert len(collector2.events()) == 8
    ledger = assert_ledger_adds_up(tmp_path, 9)
    assert (ledger.sent, ledger.rejected, ledger.retried) == (8, {"400": 2}, 1)
