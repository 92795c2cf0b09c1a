"""Several processes on one queue folder, for real: separate interpreters, and a fork.

Each process has its own ``HamustroHandler`` on the same folder, as gunicorn
workers do. ``nr`` comes from one counter in the database and batches are
leased, so the collector must see every event exactly once: no ``(session,
nr)`` twice (no batch sent by two processes), no number skipped, no event lost.
Scripts are written into ``tmp_path`` and run with this interpreter, cwd in
``tmp_path``; every wait has a timeout, so a deadlock fails instead of hanging.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from hamustro_logging.collector import DevCollector
from hamustro_logging.wire import session_id, sha256hex

from ..support import assert_ledger_adds_up, pending_in

SESSION = session_id(sha256hex("device-1"), "client-1", "OS X 10.11", "1.0.0")
WORKERS = 4
EVENTS_PER_WORKER = 500

#: The handler every script builds (tests/support.py's tracker_config, spelled out).
HANDLER = """
import json, logging, os, sys, threading, time
import hamustro_logging.queue
from hamustro_logging import HamustroHandler

url, queue_dir = sys.argv[1], sys.argv[2]
handler = HamustroHandler(
    collector_url=url, shared_secret_key="test-secret", device_id="device-1",
    client_id="client-1", system_version="OS X 10.11", product_version="1.0.0",
    queue_dir=queue_dir, queue_size=50, backoff_base=0.05, backoff_cap=0.5,
)
log = logging.getLogger("multi.app")
log.addHandler(handler)
log.setLevel(logging.INFO)
log.propagate = False
"""

#: argv: URL, queue dir, worker index, and "drain" to wait until the folder is empty.
#: Each worker logs once the file "go" appears next to the script.
WORKER = (
    HANDLER
    + """
worker = int(sys.argv[3])
go = os.path.join(os.path.dirname(os.path.abspath(__file__)), "go")
deadline = time.monotonic() + 30
while not os.path.exists(go):  # start logging together, so the workers overlap
    if time.monotonic() > deadline:
        sys.exit("never told to go")
    time.sleep(0.01)
for i in range(500):
    log.info("e", extra={"event": "multi.e", "user_id": worker * 1000 + i})
drained = True
if sys.argv[4] == "drain":
    # A forced flush stops at the first failure, so a worker whose last attempts
    # hit injected faults would leave its events for the next start. Here every
    # worker flushes until the shared folder is empty (other workers' events
    # included), so the run itself delivers everything.
    deadline = time.monotonic() + 40
    drained = False
    while not drained and time.monotonic() < deadline:
        drained = handler.flush(timeout=5)
        if not drained:
            time.sleep(0.05)
logging.shutdown()
sys.exit(0 if drained else 4)
"""
)

#: A second Cache object on the folder holds SQLite's write lock while the process forks.
FORK_IN_TRANSACTION = (
    HANDLER
    + """
holding = threading.Event()


def hold():
    # A second Queue (its own Cache, its own SQLite connection) on the handler's
    # folder takes the write lock (BEGIN IMMEDIATE, through the queue's own
    # transaction helper) and keeps it for 1 s, so the fork below is asked for
    # mid-transaction: the child must never touch SQLite (its mutexes may be
    # held forever there); its events go through its journal, which the
    # parent moves in and sends.
    q = hamustro_logging.queue.Queue(queue_dir)
    with q._transaction():
        holding.set()
        time.sleep(1)
    q.close()


holder = threading.Thread(target=hold)
holder.start()
if not holding.wait(10):
    sys.exit("the holder thread never got the write lock")
pid = os.fork()
if pid == 0:  # the child: the parent's transaction is still open
    for i in range(3):
        log.info("e", extra={"event": "fork.child", "user_id": 100 + i})
    # False: this child cannot read the store to know; it waits until its
    # journal is moved in, by the parent, within the timeout.
    ok = handler.flush(timeout=15)
    os._exit(3 if ok else 0)
_, status = os.waitpid(pid, 0)
child = os.waitstatus_to_exitcode(status)
holder.join()
for i in range(2):
    log.info("e", extra={"event": "fork.parent", "user_id": 200 + i})
parent = handler.flush(timeout=15)
print(json.dumps({"child": child, "parent": parent}), flush=True)
logging.shutdown()
"""
)


def start(script: Path, *args: str) -> subprocess.Popen[str]:
    """Run ``script`` with this interpreter in a session of its own (so a stuck
    forked grandchild can be killed with it)."""
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=script.parent,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """Wait for ``proc``; on timeout kill its process group and fail (a deadlock)."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"no exit within {timeout} s (deadlock?)\n{out}\n{err}") from None


def run_workers(collector: DevCollector, tmp_path: Path, drain: bool) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    queue_dir = str(tmp_path / "q")
    mode = "drain" if drain else "plain"
    procs = [start(script, collector.url, queue_dir, str(w), mode) for w in range(WORKERS)]
    (tmp_path / "go").touch()
    for proc in procs:
        _, err = finish(proc, timeout=60)
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err


def assert_each_event_exactly_once(events: list[dict[str, object]]) -> None:
    total = WORKERS * EVENTS_PER_WORKER
    keys = Counter((e["session"], e["nr"]) for e in events)
    twice = sorted(k for k, n in keys.items() if n > 1)
    assert twice == [], f"sent more than once: {twice[:10]}"
    assert sorted(keys) == [(SESSION, nr) for nr in range(1, total + 1)]
    expected = sorted(w * 1000 + i for w in range(WORKERS) for i in range(EVENTS_PER_WORKER))
    assert sorted(int(str(e["user_id"])) for e in events) == expected


def test_four_processes_on_one_folder_send_each_event_once(
    collector: DevCollector, tmp_path: Path
) -> None:
    run_workers(collector, tmp_path, drain=False)
    events = collector.events()
    assert len(events) == WORKERS * EVENTS_PER_WORKER
    assert_each_event_exactly_once(events)
    assert pending_in(tmp_path / "q") == 0
    assert assert_ledger_adds_up(tmp_path / "q", 2000).sent == 2000


def test_four_processes_through_errors_and_drops_lose_nothing_and_duplicate_nothing(
    collector: DevCollector, tmp_path: Path
) -> None:
    collector.fail_next(10, 500)
    # drop_next closes the connection before storing anything (collector/server.py), so
    # the resend of a dropped batch is its first delivery: still no duplicates.
    collector.drop_next(3)
    run_workers(collector, tmp_path, drain=True)
    assert collector.answered()[500] == 10  # every injected fault was met
    assert_each_event_exactly_once(collector.events())
    assert pending_in(tmp_path / "q") == 0
    # The 500s and the drops were answers that may have followed a store: their
    # resends are counted, though this collector stored nothing then.
    ledger = assert_ledger_adds_up(tmp_path / "q", 2000)
    assert ledger.sent == 2000 and ledger.resent >= 0


def test_fork_while_another_connection_holds_the_write_lock(
    collector: DevCollector, tmp_path: Path
) -> None:
    script = tmp_path / "fork.py"
    script.write_text(FORK_IN_TRANSACTION)
    proc = start(script, collector.url, str(tmp_path / "q"))
    # The work takes about 2 s (the 1 s lock, two flushes on loopback); 20 s
    # means a deadlock.
    out, err = finish(proc, timeout=20)
    assert proc.returncode == 0, err
    assert json.loads(out) == {"child": 0, "parent": True}, err
    events = collector.events()
    assert sorted(e["nr"] for e in events) == [1, 2, 3, 4, 5]  # unique across the fork
    assert {e["session"] for e in events} == {SESSION}
    assert sorted(int(str(e["user_id"])) for e in events) == [100, 101, 102, 200, 201]
    assert pending_in(tmp_path / "q") == 0
    assert assert_ledger_adds_up(tmp_path / "q", 5).sent == 5
