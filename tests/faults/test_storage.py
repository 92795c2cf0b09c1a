"""Storage faults: the app keeps running, the handler says what is wrong, and recovers."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hamustro_logging import ClientTracker, HamustroHandler
from hamustro_logging.collector import DevCollector
from hamustro_logging.queue import NUMBER_GAP

from ..support import journal_events, tracker_config


def remove(folder: Path) -> None:
    """Delete the queue folder as someone would under a running app.

    Renamed away first, in one step: the handler's threads may create files in
    the folder again at any moment (that is the behaviour under test), which
    would make a plain rmtree race with them.
    """
    gone = folder.with_name(folder.name + "-deleted")
    folder.rename(gone)
    shutil.rmtree(gone)


def emit(log: logging.Logger, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        log.info("e", extra={"event": "e", "user_id": i})


def test_unusable_folder_at_start_then_it_comes_back(
    tmp_path: Path, collector: DevCollector, log: logging.Logger, capfd: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "queue"
    folder.write_text("a file where the queue folder should be")
    handler = HamustroHandler(**tracker_config(collector, folder, queue_size=10**6))
    log.addHandler(handler)  # the app started: the handler did not stop it
    emit(log, 5)
    assert handler.flush(timeout=0.5) is False
    err = capfd.readouterr().err
    assert "cannot write the journal" in err
    assert handler.stats()["buffered"] == 5  # kept in memory, not dropped
    folder.unlink()  # storage comes back
    assert handler.flush(timeout=10) is True
    assert sorted(e["user_id"] for e in collector.wait_for(5)) == [0, 1, 2, 3, 4]
    assert "writable again" in capfd.readouterr().err


def test_folder_deleted_under_a_running_app(
    tmp_path: Path, collector: DevCollector, log: logging.Logger, capfd: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "queue"
    config = tracker_config(collector, folder, queue_size=10**6)
    handler = HamustroHandler(**config)
    log.addHandler(handler)
    emit(log, 3)
    assert handler.flush(timeout=10)
    # Another worker of the app (the same session) hands out numbers this
    # handler never sees, and they are delivered.
    with ClientTracker(**config) as worker:
        theirs = [worker.track_event("e", user_id=100 + i) for i in range(5)]
        assert worker.flush(timeout=10)
    assert theirs == [4, 5, 6, 7, 8]
    remove(folder)
    emit(log, 3, start=3)
    assert handler.flush(timeout=10)
    received = collector.wait_for(11)
    assert sorted(e["user_id"] for e in received) == [0, 1, 2, 3, 4, 5, *range(100, 105)]
    # Numbering went on in the new database past a gap, so no number the
    # other worker gave is reused: no (session, nr) names two events.
    pairs = [(e["session"], e["nr"]) for e in received]
    assert len(set(pairs)) == len(pairs) == 11, sorted(pairs)
    mine = sorted(e["nr"] for e in received if e["user_id"] in (3, 4, 5))
    assert mine == [3 + NUMBER_GAP + 1, 3 + NUMBER_GAP + 2, 3 + NUMBER_GAP + 3]
    assert (folder / "cache.db").exists()
    assert "was removed" in capfd.readouterr().err


def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_events_after_the_folder_vanished_are_not_written_into_the_void(
    tmp_path: Path, log: logging.Logger
) -> None:
    folder = tmp_path / "queue"
    config = tracker_config("http://127.0.0.1:9", folder, queue_size=10**6, durable=True)
    handler = HamustroHandler(**config)
    log.addHandler(handler)
    emit(log, 2)
    wait_until(lambda: handler.stats()["buffered"] == 0)  # moved into the first store
    remove(folder)
    emit(log, 3)  # into the journal segment the deletion removed (its pages still mapped)
    # The spool moves them into the new database, and the next event starts a
    # segment in the new folder: nothing stays only in the removed file.
    wait_until(lambda: handler.stats()["buffered"] == 0)
    assert handler.tracker.queue.pending_count() == 3
    emit(log, 1, start=3)
    assert journal_events(folder) == 1


def test_a_corrupt_database_is_set_aside_and_a_new_one_used(
    tmp_path: Path, collector: DevCollector, log: logging.Logger, capfd: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "queue"
    folder.mkdir()
    (folder / "cache.db").write_bytes(b"this is not an SQLite database" * 100)
    handler = HamustroHandler(**tracker_config(collector, folder, queue_size=10**6))
    log.addHandler(handler)
    emit(log, 2)
    assert handler.flush(timeout=10)
    assert len(collector.wait_for(2)) == 2
    assert "corrupt" in capfd.readouterr().err
    aside = list(folder.glob("cache.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")


DISK_FULL_SCRIPT = """
import json, logging, resource, signal, sys, time
from hamustro_logging import ClientTracker, HamustroHandler
url, qdir = sys.argv[1], sys.argv[2]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
handler = HamustroHandler(collector_url=url, shared_secret_key="test-secret",
    device_id="device-1", client_id="client-1", system_version="OS X 10.11",
    product_version="1.0.0", queue_dir=qdir, queue_size=10**6,
    backoff_base=0.05, backoff_cap=0.5)
log = logging.getLogger("app")
log.setLevel(logging.INFO)
log.propagate = False
log.addHandler(handler)
for i in range(10):
    log.info("e", extra={"event": "e", "user_id": i})
assert handler.flush(timeout=10)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # the disk is full
for i in range(10, 30):
    log.info("e", extra={"event": "e", "user_id": i})
time.sleep(1.5)
full = handler.stats()
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space is back
print(json.dumps({"full": full, "ok": handler.flush(timeout=15)}))
"""


def test_disk_full_keeps_events_in_memory_until_space_comes_back(
    tmp_path: Path, collector: DevCollector
) -> None:
    """A real EFBIG from the kernel (RLIMIT_FSIZE) in a real subprocess."""
    script = tmp_path / "disk_full.py"
    script.write_text(DISK_FULL_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), collector.url, str(tmp_path / "queue")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["full"]["buffered"] == 20 and result["full"]["dropped"] == {}
    assert result["ok"] is True
    assert "cannot move the journal into the store" in done.stderr
    assert "writable again" in done.stderr
    assert sorted(e["user_id"] for e in collector.wait_for(30)) == list(range(30))


_WORKER = """
import json, sys
from hamustro_logging import ClientTracker
t = ClientTracker(sys.argv[1], "test-secret", "device-1", "client-1", "OS X 10.11", "1.0.0",
                  queue_dir=sys.argv[2], queue_size=10**6, detect_ip=False)
for line in sys.stdin:
    print(json.dumps([t.track_event("e") for _ in range(int(line))]), flush=True)
"""


def test_a_folder_wiped_under_two_workers_never_reuses_a_number(tmp_path: Path) -> None:
    """gunicorn-style workers share one session; the folder is deleted under both."""
    folder = tmp_path / "queue"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, "http://127.0.0.1:9", str(folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]

    def log(worker: subprocess.Popen[str], n: int) -> list[int]:
        assert worker.stdin is not None and worker.stdout is not None
        worker.stdin.write(f"{n}\n")
        worker.stdin.flush()
        return list(json.loads(worker.stdout.readline()))

    try:
        a, b = workers
        used = log(a, 3) + log(b, 3)  # 1-3 and 4-6 from one counter
        remove(folder)
        used += log(a, 3) + log(b, 3)  # a knows only 3, b knows 6
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    assert len(set(used)) == len(used) == 12, used
