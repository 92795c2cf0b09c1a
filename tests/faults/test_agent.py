"""``hamustro-logging agent`` and ``sender="agent"``, with real processes.

The app's process starts no thread; the agent (a real subprocess) moves its
journal in and sends; SIGTERM stops the agent within its bound with nothing
lost; SIGKILL of the agent or of the app loses nothing; two agents on one
folder send each event once (any duplicate counted).
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hamustro_logging.collector import DevCollector

from ..support import TEST_SECRET, tracker_config

APP = """
import json, logging, sys, threading
from hamustro_logging import HamustroHandler
cfg = json.loads(sys.argv[1])
handler = HamustroHandler(**cfg["handler"])
log = logging.getLogger("agent.app")
log.addHandler(handler)
log.propagate = False
for i in range(cfg["start"], cfg["start"] + cfg["n"]):
    log.warning("e", extra={"event": "agent.e", "user_id": i})
print(json.dumps({"threads": threading.active_count()}), flush=True)
if cfg.get("flush"):
    print(json.dumps({"flushed": handler.flush(timeout=60)}), flush=True)
if cfg.get("hang"):
    threading.Event().wait()
"""


def start_agent(collector: DevCollector, queue_dir: Path, *extra: str) -> subprocess.Popen[str]:
    env = dict(os.environ, HAMUSTRO_SHARED_SECRET_KEY=TEST_SECRET)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hamustro_logging", "agent", "--queue-dir", str(queue_dir),
         "--collector-url", collector.url, *extra],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stderr is not None
    assert "agent started" in proc.stderr.readline()
    return proc


@pytest.fixture
def agents() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)


def run_app(
    collector: DevCollector, queue_dir: Path, n: int, start: int = 0, **cfg: Any
) -> list[dict[str, Any]]:
    handler = tracker_config(collector, queue_dir, sender="agent")
    config = {"handler": handler, "n": n, "start": start, **cfg}
    done = subprocess.run(
        [sys.executable, "-c", APP, json.dumps(config)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def user_ids(collector: DevCollector) -> collections.Counter[int]:
    return collections.Counter(int(str(e["user_id"])) for e in collector.events())


def wait_for_all(collector: DevCollector, expected: range, timeout: float = 120) -> None:
    """Until every expected event arrived (duplicates do not count toward it)."""
    deadline = time.monotonic() + timeout
    while set(user_ids(collector)) != set(expected):
        missing = len(set(expected) - set(user_ids(collector)))
        assert time.monotonic() < deadline, f"{missing} events never arrived"
        time.sleep(0.05)


def test_the_app_starts_no_thread_and_the_agent_delivers_everything(
    collector: DevCollector, tmp_path: Path, agents: list[subprocess.Popen[str]]
) -> None:
    queue_dir = tmp_path / "q"
    agents.append(start_agent(collector, queue_dir))
    out = run_app(collector, queue_dir, 2000, flush=True)
    assert out == [{"threads": 1}, {"flushed": True}]
    assert user_ids(collector) == collections.Counter(range(2000))


def _nice(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rpartition(")")[2].split()[16])


def test_the_agent_runs_below_the_apps_cpu_priority(
    collector: DevCollector, tmp_path: Path, agents: list[subprocess.Popen[str]]
) -> None:
    mine = _nice(os.getpid())
    agents.append(start_agent(collector, tmp_path / "a"))
    agents.append(start_agent(collector, tmp_path / "b", "--nice", "3"))
    assert [_nice(p.pid) - mine for p in agents] == [min(10, 19 - mine), min(3, 19 - mine)]
    refused = subprocess.run(
        [sys.executable, "-m", "hamustro_logging", "agent", "--queue-dir", str(tmp_path / "c"),
         "--collector-url", collector.url, "--nice", "20"],
        capture_output=True, text=True, timeout=60,
        env=dict(os.environ, HAMUSTRO_SHARED_SECRET_KEY=TEST_SECRET),
    )  # fmt: skip
    assert refused.returncode == 2
    assert "--nice must be 0 to 19, got 20" in refused.stderr


def test_flush_says_when_no_agent_runs(collector: DevCollector, tmp_path: Path) -> None:
    handler = tracker_config(collector, tmp_path / "q", sender="agent")
    config = {"handler": handler, "n": 5, "start": 0, "flush": True}
    done = subprocess.run(
        [sys.executable, "-c", APP, json.dumps(config)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert json.loads(done.stdout.splitlines()[1]) == {"flushed": False}
    assert "no hamustro-logging agent runs" in done.stderr


def test_sigterm_stops_the_agent_within_its_bound_and_nothing_is_lost(
    collector: DevCollector, tmp_path: Path, agents: list[subprocess.Popen[str]]
) -> None:
    queue_dir = tmp_path / "q"
    stop_timeout = 2.0
    agent = start_agent(collector, queue_dir, "--stop-timeout", str(stop_timeout))
    agents.append(agent)
    run_app(collector, queue_dir, 500)
    collector.wait_for(500, timeout=60)
    collector.hang_next(1, seconds=30)  # the next request hangs: the stop must not wait it out
    run_app(collector, queue_dir, 100, start=500)
    time.sleep(0.5)  # (let the agent start the hanging request; the bound holds either way)
    started = time.monotonic()
    agent.send_signal(signal.SIGTERM)
    _, err = agent.communicate(timeout=120)
    took = time.monotonic() - started
    # A request in flight ends within the transport's request_timeout (30 s by
    # default), then at most --stop-timeout for the last pass.
    assert took < 30 + stop_timeout + 10, f"the agent took {took:.1f} s to stop"
    assert "agent stopped:" in err
    # What it did not send is still in the folder: a new agent sends it.
    agents.append(start_agent(collector, queue_dir))
    wait_for_all(collector, range(600))


def test_sigkill_of_the_agent_and_of_the_app_loses_nothing(
    collector: DevCollector, tmp_path: Path, agents: list[subprocess.Popen[str]]
) -> None:
    queue_dir = tmp_path / "q"
    first = start_agent(collector, queue_dir)
    agents.append(first)
    handler = tracker_config(collector, queue_dir, sender="agent")
    app = subprocess.Popen(
        [sys.executable, "-c", APP,
         json.dumps({"handler": handler, "n": 20_000, "start": 0, "hang": True})],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert app.stdout is not None
    app.stdout.readline()  # every emit returned
    first.send_signal(signal.SIGKILL)
    app.send_signal(signal.SIGKILL)
    app.wait(timeout=60)
    first.wait(timeout=60)
    agents.append(start_agent(collector, queue_dir))
    wait_for_all(collector, range(20_000))


def test_two_agents_share_a_folder_without_moving_anything_twice(
    collector: DevCollector, tmp_path: Path, agents: list[subprocess.Popen[str]]
) -> None:
    queue_dir = tmp_path / "q"
    run_app(collector, queue_dir, 100)  # the folder exists before both agents
    agents.extend(start_agent(collector, queue_dir) for _ in range(2))
    for k in range(4):
        run_app(collector, queue_dir, 5000, start=100 + k * 5000)
    wait_for_all(collector, range(20_100))
    got = user_ids(collector)
    # Leases keep two agents from sending a batch at once; nothing fails here,
    # so nothing may go out twice.
    assert [i for i, n in got.items() if n > 1] == []
