"""Crashes and forks, for real: subprocesses killed with SIGKILL, a real ``os.fork()``.

Each scenario runs a small script (written into ``tmp_path``) in its own
Python process, so the test process is never forked with pytest's threads
and a deadlock fails the test (every wait has a timeout) instead of hanging it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hamustro_logging import HamustroHandler
from hamustro_logging.collector import DevCollector
from hamustro_logging.handler import HANDLER_OPTIONS
from hamustro_logging.queue import Queue

from ..support import (
    FAST,
    IDENTITY,
    SESSION,
    assert_ledger_adds_up,
    collector_at,
    dead_url,
    pending_in,
)

#: Shared by every script: build the handler from argv[1] (JSON), attach it.
PRELUDE = """
import json, logging, os, sys, time
from hamustro_logging import HamustroHandler

cfg = json.loads(sys.argv[1])
handler = HamustroHandler(**cfg["handler"])
log = logging.getLogger("crash.app")
log.addHandler(handler)
log.setLevel(logging.INFO)
log.propagate = False


def emit(n, start=0, **extra):
    for i in range(start, start + n):
        log.info("e", extra={"event": "crash.e", "params": {"i": i}, **extra})
"""

KILL_WHILE_WAITING = """
emit(cfg["n"])
time.sleep(0.5)  # the durability window: the spool thread writes within it
print("ready", flush=True)
time.sleep(3600)
"""

KILL_WHILE_POSTING = """
emit(1)
queue = handler.tracker.queue
deadline = time.monotonic() + 10
while not any(s.leased for s in queue.sessions()):  # claimed: its POST is in flight
    if time.monotonic() > deadline:
        sys.exit("the first event was never sent")
    time.sleep(0.01)
emit(cfg["n"] - 1, start=1)
while queue.pending_count() < cfg["n"]:
    if time.monotonic() > deadline:
        sys.exit("the events were never stored")
    time.sleep(0.01)
print("ready", flush=True)
time.sleep(3600)
"""

FORK = """
emit(2)  # the fork comes at once: the spool thread may be writing these right now
go_read, go_write = os.pipe()
pid = os.fork()
if pid == 0:  # the child: own threads, own connections, same folder
    os.close(go_write)
    os.read(go_read, 1)  # the parent's events are sent: the folder holds only ours next
    emit(3, start=100, user_id=cfg["child_user_id"])
    # True, or False when the fork caught a parent thread inside SQLite: the
    # child then never touches the database and the parent sends its events.
    handler.flush(timeout=10)
    os._exit(0)
os.close(go_read)
emit(2, start=2)
parent_flushed = handler.flush(timeout=10)
os.write(go_write, b"x")
_, status = os.waitpid(pid, 0)
child = os.waitstatus_to_exitcode(status)
last_flushed = handler.flush(timeout=10)
print(json.dumps({"child": child, "parent_flushed": parent_flushed, "last": last_flushed}))
sys.exit(0 if child == 0 and parent_flushed and last_flushed else 1)
"""

FORK_WHILE_BUSY = """
import signal, threading

def keep_logging():
    i = 0
    while True:
        emit(1, start=i)
        i += 1
        time.sleep(0.0005)

threading.Thread(target=keep_logging, daemon=True).start()
time.sleep(0.2)  # the spool thread now writes to SQLite nearly all the time
hung = 0
for _ in range(cfg["forks"]):
    pid = os.fork()
    if pid == 0:  # the child uses the handler once, then leaves
        log.info("child", extra={"event": "child"})
        handler.stats()
        os._exit(0)
    deadline = time.monotonic() + 5
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            hung += 1
            break
        time.sleep(0.01)
    if hung:
        break
print(json.dumps({"hung": hung}))
"""

EXIT_WITHOUT_CLOSE = """
emit(cfg["n"])
print("emitted", flush=True)
# no close(), no flush(): logging.shutdown() runs at exit
"""


def leased_in(queue_dir: Path) -> int:
    queue = Queue(queue_dir)
    try:
        return sum(s.leased for s in queue.sessions())
    finally:
        queue.close()


def numbers(events: list[dict[str, Any]]) -> list[int]:
    assert {e["session"] for e in events} == {SESSION}
    return sorted(e["nr"] for e in events)


def once_or_counted(events: list[dict[str, Any]], n: int, resent: int) -> bool:
    """Every nr 1..n arrived, and no more copies than the sender counted as resent.

    A multiset, not a set: a duplicate the sender did not count fails.
    """
    assert len({e["session"] for e in events}) == 1
    arrived = Counter(e["nr"] for e in events)
    assert set(arrived) == set(range(1, n + 1)), sorted(arrived)
    duplicates = sum(arrived.values()) - n
    assert duplicates <= resent, f"{duplicates} duplicates, {resent} counted as resent"
    return True


def handler_options(url: str, secret: str, queue_dir: Path, **options: Any) -> dict[str, Any]:
    return {
        **IDENTITY,
        "collector_url": url,
        "shared_secret_key": secret,
        "queue_dir": str(queue_dir),
        **FAST,
        **options,
    }


class Script:
    """Writes a script into tmp_path and runs it with this interpreter, cwd in tmp_path."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.running: list[subprocess.Popen[str]] = []

    def _argv(self, body: str, config: dict[str, Any]) -> list[str]:
        path = self.tmp_path / f"script_{len(list(self.tmp_path.glob('script_*.py')))}.py"
        path.write_text(PRELUDE + body)
        return [sys.executable, str(path), json.dumps(config)]

    def run(
        self, body: str, config: dict[str, Any], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """Run to the end; TimeoutExpired (a test failure) after ``timeout`` seconds."""
        proc = self.start(body, config)
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def start(self, body: str, config: dict[str, Any]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            self._argv(body, config),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.tmp_path,
            start_new_session=True,  # its own process group: forked children die with it
        )
        self.running.append(proc)
        return proc

    def stop_all(self) -> None:
        """Kill what is left of each script's process group (a stuck forked child too)."""
        for proc in self.running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)


@pytest.fixture
def script(tmp_path: Path) -> Iterator[Script]:
    runner = Script(tmp_path)
    yield runner
    runner.stop_all()


def wait_for_line(proc: subprocess.Popen[str], expected: str, timeout: float = 30.0) -> None:
    """Read the process's stdout until ``expected``; fail if it exits or takes too long."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {expected!r} within {timeout} s"
        readable, _, _ = select.select([proc.stdout], [], [], left)
        if not readable:
            continue
        line = proc.stdout.readline()
        if not line:
            _, err = proc.communicate(timeout=10)
            pytest.fail(f"the script exited with {proc.returncode} before {expected!r}:\n{err}")
        if line.strip() == expected:
            return


def kill9(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL


# -- A. SIGKILL while events wait for a dead collector ---------------------------


def test_sigkill_while_collector_is_dead_loses_nothing(
    secret: str, tmp_path: Path, script: Script
) -> None:
    queue_dir = tmp_path / "q"
    url = dead_url()  # the collector is down when the events are logged
    dead = handler_options(url, secret, queue_dir, timeout=(0.5, 0.5))
    proc = script.start(KILL_WHILE_WAITING, {"handler": dead, "n": 500})
    wait_for_line(proc, "ready")
    kill9(proc)
    assert pending_in(queue_dir) == 500  # all on disk when the process died

    with collector_at(url, secret) as collector:
        handler = HamustroHandler(**handler_options(url, secret, queue_dir))
        try:
            handler.flush(timeout=10)
            events = collector.wait_for(500, timeout=30)
        finally:
            handler.close()
    assert numbers(events) == list(range(1, 501))  # exactly once: it never reached a collector
    assert sorted(json.loads(e["parameters"])["i"] for e in events) == list(range(500))
    assert pending_in(queue_dir) == 0
    assert assert_ledger_adds_up(queue_dir, 500).resent == 0  # no request ever got out


# -- B. SIGKILL while a POST is in flight ----------------------------------------


def test_sigkill_while_posting_loses_nothing(
    collector: DevCollector, secret: str, tmp_path: Path, script: Script
) -> None:
    collector.hang_next(1, seconds=30)
    queue_dir = tmp_path / "q"
    # (0.5, 2): the POST stays in flight for 2 s; its lease lasts much longer.
    options = handler_options(collector.url, secret, queue_dir, queue_size=1, timeout=(0.5, 2))
    proc = script.start(KILL_WHILE_POSTING, {"handler": options, "n": 10})
    wait_for_line(proc, "ready")
    kill9(proc)
    assert pending_in(queue_dir) == 10
    # The in-flight batch's lease is still in the folder, but its owner is
    # gone: another process of this host takes it over at once.
    assert leased_in(queue_dir) == 0

    handler = HamustroHandler(**options)
    try:
        # Within 10 s, far less than the lease (the request's bound and 30 s):
        # taken over because its owner is gone, not because it expired.
        assert handler.flush(timeout=10) is True
        collector.wait_for(10, timeout=10)
        resent = handler.stats()["resent"]
    finally:
        handler.close()
    assert once_or_counted(collector.events(), 10, resent)
    assert resent == 1  # the batch in flight at the kill went out again, and is counted
    assert assert_ledger_adds_up(queue_dir, 10).resent == 1


# -- C. a real fork ----------------------------------------------------------------


def test_fork_child_gets_own_threads_and_numbers_stay_unique(
    collector: DevCollector, secret: str, tmp_path: Path, script: Script
) -> None:
    options = handler_options(collector.url, secret, tmp_path / "q", queue_size=1000)
    done = script.run(FORK, {"handler": options, "child_user_id": 4242}, timeout=60)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert json.loads(done.stdout) == {"child": 0, "parent_flushed": True, "last": True}
    events = collector.events()
    assert numbers(events) == list(range(1, 8))  # 7 events, nr unique within the session
    child = [e for e in events if e["user_id"] == 4242]
    assert sorted(json.loads(e["parameters"])["i"] for e in child) == [100, 101, 102]
    parent = [e for e in events if e["user_id"] is None]
    assert sorted(json.loads(e["parameters"])["i"] for e in parent) == [0, 1, 2, 3]
    assert pending_in(tmp_path / "q") == 0
    assert assert_ledger_adds_up(tmp_path / "q", 7).sent == 7


def test_fork_while_handler_threads_write_does_not_deadlock_the_child(
    secret: str, tmp_path: Path, script: Script
) -> None:
    # A child forked while a handler thread is inside SQLite must not block on a
    # SQLite lock that thread held (seen as a hang of the child in sqlite3Malloc).
    options = handler_options(dead_url(), secret, tmp_path / "q", queue_size=10**6)
    done = script.run(FORK_WHILE_BUSY, {"handler": options, "forks": 40}, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"hung": 0}


# -- D. exit without close() while the collector is unreachable -------------------


def exit_time(script: Script, config: dict[str, Any]) -> tuple[float, str]:
    """Seconds from the script's last line to its end (logging.shutdown at exit), and stderr."""
    proc = script.start(EXIT_WITHOUT_CLOSE, config)
    wait_for_line(proc, "emitted")
    started = time.monotonic()
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - started
    assert proc.returncode == 0, err
    return took, err


#: The handler's default close_timeout (what bounds an exit when none is set).
DEFAULT_CLOSE_TIMEOUT = float(HANDLER_OPTIONS["close_timeout"][1])


def exit_bound(close_timeout: float) -> float:
    """logging.shutdown() at exit: flush() and close(), each within close_timeout
    (docs/delivery.md), and one close_timeout more for the interpreter's own exit."""
    return 3 * close_timeout


def test_exit_with_dead_collector_is_prompt_and_next_run_delivers(
    collector: DevCollector, secret: str, tmp_path: Path, script: Script
) -> None:
    queue_dir = tmp_path / "q"
    dead = handler_options(dead_url(), secret, queue_dir)
    took, err = exit_time(script, {"handler": dead, "n": 100})
    assert took < exit_bound(DEFAULT_CLOSE_TIMEOUT), f"the exit took {took:.1f} s"
    assert "Traceback" not in err
    assert pending_in(queue_dir) == 100

    with collector_at(dead["collector_url"], secret) as revived:
        done = script.run(EXIT_WITHOUT_CLOSE, {"handler": dead, "n": 0}, timeout=30)
        assert done.returncode == 0, done.stderr
        assert numbers(revived.events()) == list(range(1, 101))  # sent by logging.shutdown
    assert pending_in(queue_dir) == 0
    assert assert_ledger_adds_up(queue_dir, 100).sent == 100


def test_exit_with_hanging_collector_is_prompt(
    collector: DevCollector, secret: str, tmp_path: Path, script: Script
) -> None:
    collector.hang_next(100, seconds=60)
    queue_dir = tmp_path / "q"
    # The library's default request timeout (3.05, 10): only close_timeout bounds the exit.
    close_timeout = 2.0
    options = handler_options(collector.url, secret, queue_dir, close_timeout=close_timeout)
    options.pop("backoff_base")
    options.pop("backoff_cap")
    took, _ = exit_time(script, {"handler": options, "n": 100})
    # (A close that waited twice close_timeout, or the request's 10 s, fails.)
    assert took < exit_bound(close_timeout), f"the exit took {took:.1f} s"
    assert collector.events() == []
    assert pending_in(queue_dir) == 100  # nothing lost, it waits for the next run
    assert assert_ledger_adds_up(queue_dir, 100).stored == 100
