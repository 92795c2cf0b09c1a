"""Child processes started by ``multiprocessing`` deliver every event they logged.

With the ``fork`` start method ``multiprocessing`` ends a child with
``os._exit``: ``logging.shutdown()`` never runs there, and what the child
had buffered in memory must still reach the disk. Each scenario runs in a
script of its own (the test process never forks with pytest's threads),
against the dev collector on loopback; the parent flushes at the end and
the collector must hold every (child, i) exactly once, with unique nr.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from hamustro_logging.collector import DevCollector

from ..support import FAST, IDENTITY, pending_in

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import concurrent.futures, json, multiprocessing, sys

sys.path.insert(0, {root!r})  # spawned children get this sys.path too
from tests.faults import children_helper as helper


def main():
    cfg = json.loads(sys.argv[1])
    method, kind, children, n = cfg["method"], cfg["kind"], cfg["children"], cfg["n"]
    ctx = multiprocessing.get_context(method)
    options = json.dumps(cfg["handler"])
    handler = helper.setup(options)  # the parent's; a forked child inherits it
    spawn = method == "spawn"
    init = {{"initializer": helper.setup, "initargs": (options,)}} if spawn else {{}}
    jobs = [(k, n) for k in range(children)]
    exitcodes = []
    if kind == "process":
        if spawn:
            target = helper.setup_and_emit
            procs = [ctx.Process(target=target, args=(options, *job)) for job in jobs]
        else:
            procs = [ctx.Process(target=helper.emit, args=job) for job in jobs]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        exitcodes = [p.exitcode for p in procs]
    elif kind == "pool":
        pool = ctx.Pool(4, **init)
        pool.starmap(helper.emit, jobs)
        pool.close()
        pool.join()
    elif kind == "executor":
        with concurrent.futures.ProcessPoolExecutor(4, mp_context=ctx, **init) as ex:
            list(ex.map(helper.emit, *zip(*jobs)))
    flushed = handler.flush(timeout=30)
    print(json.dumps({{"flushed": flushed, "exitcodes": exitcodes}}), flush=True)


if __name__ == "__main__":
    main()
"""


def run_children(
    collector: DevCollector, secret: str, tmp_path: Path, **cfg: Any
) -> tuple[dict[str, Any], str]:
    """Run the scenario; return its JSON line and its stderr."""
    handler = {
        **IDENTITY,
        "collector_url": collector.url,
        "shared_secret_key": secret,
        "queue_dir": str(tmp_path / "q"),
        "queue_size": 100_000,  # no send from a child: the parent's flush sends
        **FAST,
    }
    path = tmp_path / "children.py"
    path.write_text(SCRIPT.format(root=str(ROOT)))
    proc = subprocess.Popen(
        [sys.executable, str(path), json.dumps({**cfg, "handler": handler})],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        start_new_session=True,  # its own process group: a stuck child dies with it
    )
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1]), err


def check_all_delivered(collector: DevCollector, tmp_path: Path, children: int, n: int) -> None:
    events = collector.wait_for(children * n, timeout=30)
    pairs = Counter((e["session"], e["nr"]) for e in events)
    assert max(pairs.values()) == 1, "an nr was given twice in a session"
    logged = Counter((p["child"], p["i"]) for p in (json.loads(e["parameters"]) for e in events))
    assert set(logged) == {(k, i) for k in range(children) for i in range(n)}
    assert max(logged.values()) == 1
    assert len(events) == children * n
    assert pending_in(tmp_path / "q") == 0


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_process_children_deliver_everything(
    method: str, collector: DevCollector, secret: str, tmp_path: Path
) -> None:
    result, _ = run_children(
        collector, secret, tmp_path, method=method, kind="process", children=10, n=200
    )
    assert result["exitcodes"] == [0] * 10
    assert result["flushed"] is True
    check_all_delivered(collector, tmp_path, 10, 200)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_close_join_delivers_everything(
    method: str, collector: DevCollector, secret: str, tmp_path: Path
) -> None:
    result, _ = run_children(
        collector, secret, tmp_path, method=method, kind="pool", children=10, n=200
    )
    assert result["flushed"] is True
    check_all_delivered(collector, tmp_path, 10, 200)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_process_pool_executor_delivers_everything(
    method: str, collector: DevCollector, secret: str, tmp_path: Path
) -> None:
    result, _ = run_children(
        collector, secret, tmp_path, method=method, kind="executor", children=10, n=200
    )
    assert result["flushed"] is True
    check_all_delivered(collector, tmp_path, 10, 200)
