"""Nothing the handler does may hang the application or outlast its bounds.

Real processes throughout: a second process holding SQLite's write lock
(``BEGIN IMMEDIATE`` on the folder's ``cache.db``), a collector that never
answers, a real ``os.fork()`` racing ``logging.config.dictConfig``. Scripts
that could hang run in a subprocess of their own with a timeout, so a
deadlock fails the test instead of hanging it. Bounds are asserted with a
generous margin: the point is "bounded", not a timing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hamustro_logging import HamustroHandler
from hamustro_logging.collector import DevCollector

from ..support import FAST, IDENTITY, dead_url, pending_in

LOCKER = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN IMMEDIATE")  # SQLite's write lock, held until stdin closes
print("locked", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def write_lock_held(queue_dir: Path) -> Iterator[None]:
    """Another process holds the write lock of the folder's database meanwhile."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(queue_dir / "cache.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        yield
    finally:
        proc.communicate(timeout=10)


def options(url: str, secret: str, queue_dir: Path, **more: Any) -> dict[str, Any]:
    return {
        **IDENTITY,
        "collector_url": url,
        "shared_secret_key": secret,
        "queue_dir": str(queue_dir),
        **FAST,
        **more,
    }


def run_script(tmp_path: Path, body: str, config: dict[str, Any], timeout: float) -> str:
    """Run ``body`` with this interpreter (argv[1]: JSON); its stdout. Fails on timeout."""
    path = tmp_path / "script.py"
    path.write_text(body)
    proc = subprocess.Popen(
        [sys.executable, str(path), json.dumps(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        start_new_session=True,  # its own process group: forked children die with it
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the script did not finish within {timeout} s (a deadlock?)")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == 0, err
    return out


# -- os.fork() while another thread runs dictConfig --------------------------------

FORK_VS_DICTCONFIG = """
import json, logging, logging.config, os, sys, threading

cfg = json.loads(sys.argv[1])
config = {
    "version": 1,
    "handlers": {"hamustro": {"class": "hamustro_logging.HamustroHandler", **cfg["handler"]}},
    "loggers": {"app": {"handlers": ["hamustro"], "level": "INFO"}},
}
stop = threading.Event()


def configure():
    while not stop.is_set():  # each call closes the last handler and builds a new one
        logging.config.dictConfig(config)
        logging.getLogger("app").info("e", extra={"event": "e"})
        # A breath between calls, as any real thread has: fork() first takes
        # logging's module lock, which dictConfig holds throughout, and a thread
        # that takes it again the instant it lets go can keep the woken forking
        # thread from it for as long as it loops (the lock is not fair).
        stop.wait(0.001)


thread = threading.Thread(target=configure, daemon=True)
thread.start()
for _ in range(cfg["forks"]):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
stop.set()
thread.join()
print("done")
"""


# -- the garbage a child inherits while SQLite may be locked in it ---------------------

FORK_WITH_GARBAGE = """
import gc, json, os, sys, threading
from hamustro_logging.store import db

gate_held = json.loads(sys.argv[1])["gate_held"]
seen_r, seen_w = os.pipe()


class Cycle:
    # Stands for a SQLite connection in a reference cycle: only the collector
    # frees it, and freeing it calls into SQLite (its finalizer).
    def __init__(self):
        self.me = self

    def __del__(self):
        os.write(seen_w, b"child" if os.getpid() != parent else b"parent")


parent = os.getpid()
held, release = threading.Event(), threading.Event()


def inside_sqlite():  # a handler thread in a transaction holds the fork gate
    with db._fork_gate:
        held.set()
        release.wait()


if gate_held:
    threading.Thread(target=inside_sqlite).start()
    held.wait()
gc.disable()
Cycle()  # garbage from here on, not yet collected
gc.enable()
pid = os.fork()
if pid == 0:
    gc.collect()
    os._exit(0 if db.sqlite_usable_after_fork() != gate_held else 3)
_, status = os.waitpid(pid, 0)
release.set()
os.close(seen_w)
print(json.dumps({"status": status, "finalized": os.read(seen_r, 100).decode()}))
"""


@pytest.mark.parametrize("gate_held", [True, False], ids=["inside SQLite", "outside"])
def test_a_child_forked_inside_sqlite_never_collects_the_parents_garbage(
    tmp_path: Path, gate_held: bool
) -> None:
    """Freeing a SQLite connection left by the parent would hang such a child.

    Seen in the dictConfig race below: a child forked while a handler thread
    was in SQLite hung in ``sqlite3_finalize``, called by the collector from
    its after-fork hook. Outside SQLite the child collects as usual.
    """
    out = json.loads(run_script(tmp_path, FORK_WITH_GARBAGE, {"gate_held": gate_held}, 30))
    assert out["status"] == 0
    # (the parent may collect its own copy meanwhile: only the child's counts)
    assert ("child" in out["finalized"]) is not gate_held


def test_fork_while_dictconfig_runs_does_not_deadlock(secret: str, tmp_path: Path) -> None:
    config = {
        "handler": options(dead_url(), secret, tmp_path / "q", close_timeout=0.2),
        "forks": 50,
    }
    out = run_script(tmp_path, FORK_VS_DICTCONFIG, config, timeout=60)
    assert out.strip() == "done"


# -- durable emit while another process holds the write lock -----------------------


# -- logging.shutdown() with a hung collector and a locked database ----------------

SHUTDOWN = """
import json, logging, sys, time
from hamustro_logging import HamustroHandler

cfg = json.loads(sys.argv[1])
handler = HamustroHandler(**cfg["handler"])
log = logging.getLogger("app")
log.addHandler(handler)
log.setLevel(logging.INFO)
log.propagate = False
log.info("e", extra={"event": "first"})  # queue_size=1: sent at once, to a collector that hangs
queue = handler.tracker.queue
deadline = time.monotonic() + 10
while not any(s.leased for s in queue.sessions()):  # its POST is in flight
    assert time.monotonic() < deadline, "the first event was never sent"
    time.sleep(0.01)
print("posting", flush=True)
sys.stdin.readline()  # the test now holds the database's write lock
for i in range(100):
    log.info("e", extra={"event": "later", "params": {"i": i}})
started = time.monotonic()
logging.shutdown()
print(json.dumps({"shutdown": time.monotonic() - started}), flush=True)
"""


def test_logging_shutdown_stays_within_its_bound(
    collector: DevCollector, secret: str, tmp_path: Path
) -> None:
    collector.hang_next(100, seconds=60)
    queue_dir = tmp_path / "q"
    # The default request timeout (3.05, 10): only close_timeout bounds the exit.
    config = options(collector.url, secret, queue_dir, queue_size=1, close_timeout=1)
    path = tmp_path / "shutdown.py"
    path.write_text(SHUTDOWN)
    proc = subprocess.Popen(
        [sys.executable, str(path), json.dumps({"handler": config})],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        assert proc.stdout.readline().strip() == "posting"
        with write_lock_held(queue_dir):
            proc.stdin.write("go\n")
            proc.stdin.flush()
            out, err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == 0, err
    took = json.loads(out)["shutdown"]
    # flush() and close() are bounded by close_timeout each: 2 s, and 1 s of margin.
    assert took < 3, f"logging.shutdown() took {took:.1f} s"
    assert "events wait in the journal" in err, (out, err)  # said, never silent
    assert pending_in(queue_dir) == 1  # the event in flight stays, for the next start


# -- a full buffer while the spool thread cannot write -----------------------------


@pytest.mark.parametrize("on_full", ["wait", "drop"])
def test_full_buffer_with_stalled_spool_drops_with_the_cause_without_waiting_each_time(
    on_full: str,
    collector: DevCollector,
    secret: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    queue_dir = tmp_path / "q"
    small = {"max_buffer": 20, "full_timeout": 0.5, "on_full": on_full, "queue_size": 10**6}
    handler = HamustroHandler(**options(collector.url, secret, queue_dir, **small))
    log = logging.getLogger(f"hangs.full.{on_full}")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        log.info("e", extra={"event": "first"})
        assert handler.flush(timeout=10) is True
        with write_lock_held(queue_dir):
            started = time.monotonic()
            for i in range(200):
                log.info("e", extra={"event": "stalled", "params": {"i": i}})
            took = time.monotonic() - started
        # One wait of full_timeout at most, not one per event (180 x 0.5 s).
        assert took < 5, f"200 emits took {took:.1f} s"
        deadline = time.monotonic() + 10
        while handler.stats()["buffered"]:  # the spool thread writes again
            assert time.monotonic() < deadline, "the buffer was never written"
            time.sleep(0.01)
        log.info("e", extra={"event": "after"})  # buffered again
        dropped = handler.stats()["dropped"]
        assert set(dropped) == {"buffer_full"}
        # False once: events were dropped since the last flush (counted, said)...
        assert handler.flush(timeout=10) is False
        # ...and every event it stored is delivered.
        assert handler.flush(timeout=10) is True
        delivered = len(collector.events())
        assert delivered + dropped["buffer_full"] == 202
        assert delivered >= 22  # the first, a full buffer, the last
    finally:
        log.removeHandler(handler)
        handler.close()
    err = capsys.readouterr().err
    if on_full == "wait":
        assert "waited 0.5 s for room among 20 events" in err
        assert "nothing was moved into the store in that time" in err
    else:
        assert "on_full='drop'" in err
    assert "events are written to the journal again" in err  # the streak's end is said too


# -- stderr routed into logging (as Celery workers do) -------------------------------

STDERR_INTO_LOGGING = """
import json, logging, sys
from hamustro_logging import ClientTracker, HamustroHandler
config = json.loads(sys.argv[1])
real_stderr = sys.stderr

class LoggingProxy:  # like celery.utils.log.LoggingProxy
    def write(self, text):
        if text.strip():
            logging.getLogger("celery.redirected").warning(text.strip())
    def flush(self):
        pass

# Events of another deployment (another key) in the same folder: the sender
# reports them on stderr, from inside its database work.
with ClientTracker(**config["other"]) as other:
    other.track_event("theirs")
logging.basicConfig(stream=real_stderr, level=logging.INFO)
handler = HamustroHandler(**config["handler"])
logging.getLogger().addHandler(handler)
sys.stderr = LoggingProxy()
log = logging.getLogger("app")
for i in range(2000):
    log.info("x", extra={"event": "mine"})
sys.stderr = real_stderr
handler.close()
print("done")
"""


def test_stderr_routed_into_logging_does_not_deadlock_durable_emits(
    secret: str, tmp_path: Path
) -> None:
    url, queue_dir = dead_url(), tmp_path / "q"
    config = {
        "other": options(url, "another-key", queue_dir, queue_size=10**6),
        "handler": options(url, secret, queue_dir, durable=True, queue_size=1, close_timeout=1),
    }
    assert run_script(tmp_path, STDERR_INTO_LOGGING, config, timeout=60).strip() == "done"


def test_close_does_not_wait_out_an_emit_waiting_for_room(
    collector: DevCollector, secret: str, tmp_path: Path
) -> None:
    queue_dir = tmp_path / "q"
    small = {"max_buffer": 5, "full_timeout": 30, "queue_size": 10**6, "close_timeout": 0.5}
    handler = HamustroHandler(**options(collector.url, secret, queue_dir, **small))
    log = logging.getLogger("hangs.close-while-waiting")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        log.info("e", extra={"event": "first"})
        assert handler.flush(timeout=10) is True
        with write_lock_held(queue_dir):  # the spool thread cannot write: the buffer fills

            def produce() -> None:
                for _ in range(20):
                    log.info("e", extra={"event": "more"})

            producer = threading.Thread(target=produce)
            producer.start()
            deadline = time.monotonic() + 10
            while handler.stats()["buffered"] < 5:  # full; the producer now waits (30 s)
                assert time.monotonic() < deadline
                time.sleep(0.01)
            time.sleep(0.2)
            started = time.monotonic()
            handler.close()
            took = time.monotonic() - started
            producer.join(5)
    finally:
        log.removeHandler(handler)
    # close_timeout is 0.5 s; the waiting emit would have held close() up for
    # seconds (until the spool thread gave up on the lock, or full_timeout).
    assert took < 2, f"close() took {took:.1f} s behind an emit waiting for room"
    assert not producer.is_alive()


def test_opening_a_queue_whose_database_another_process_holds_is_bounded(
    collector: DevCollector, secret: str, tmp_path: Path
) -> None:
    """diskcache writes its settings at every open: the handler must not wait out that lock."""
    queue_dir = tmp_path / "q"
    HamustroHandler(**options(collector.url, secret, queue_dir)).close()  # the folder exists
    config = options(collector.url, secret, queue_dir, durable=True, durable_timeout=0.3)
    with write_lock_held(queue_dir):
        started = time.monotonic()
        handler = HamustroHandler(**config)  # as under dictConfig, holding logging's lock
        constructed = time.monotonic() - started
        log = logging.getLogger("hangs.open-locked")
        log.addHandler(handler)
        log.propagate = False
        log.setLevel(logging.INFO)
        try:
            started = time.monotonic()
            log.info("e", extra={"event": "while_locked"})  # durable: opens the queue now
            emitted = time.monotonic() - started
            started = time.monotonic()
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            forked = time.monotonic() - started
            os.waitpid(pid, 0)
        finally:
            log.removeHandler(handler)
    try:
        assert handler.flush(timeout=10) is True  # the event waited in memory, then went out
    finally:
        handler.close()
    assert [e["event"] for e in collector.wait_for(1)] == ["while_locked"]
    # Bounds of about a second, against a lock held for the whole block (the
    # old code waited the lock out: up to 60 s in diskcache's open).
    assert constructed < 3, f"the constructor took {constructed:.1f} s"
    assert emitted < 3, f"a durable emit took {emitted:.1f} s"
    assert forked < 3, f"os.fork() took {forked:.1f} s"
