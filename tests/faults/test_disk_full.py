"""Issue 10: a disk filled by the queue itself must still drain; issue 21: and by another file.

The free-space floor against the real disk of ``tmp_path``; a real 4 MiB
tmpfs filled by the queue while the collector is down; a real 16 MiB tmpfs
that another file fills to the last byte (a real ENOSPC) under a queue with
events to send. The tmpfs tests are skipped where this process may not mount
one; each mounts and unmounts its own, under ``tmp_path``.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from hamustro_logging import ClientTracker, HamustroHandler
from hamustro_logging.collector import DevCollector
from hamustro_logging.queue import DiskSpaceLow

from ..support import collector_at, dead_url, tracker_config


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_under_the_floor_new_events_are_refused_and_pending_ones_still_go_out(
    tmp_path: Path, collector: DevCollector
) -> None:
    folder = tmp_path / "queue"
    with ClientTracker(**tracker_config(collector, folder, queue_size=10**6)) as t:
        for i in range(5):
            t.track_event("before", user_id=i)
    floor = free_bytes(tmp_path) + (256 << 20)  # just above what the disk has free
    config = tracker_config(collector, folder, queue_size=10**6, min_free_bytes=floor)
    with ClientTracker(**config) as t:
        with pytest.raises(DiskSpaceLow, match="min_free_bytes"):
            t.track_event("refused")
        stats = t.stats()
        assert "DiskSpaceLow" in (stats["storage_error"] or "")
        assert stats["pending"] == 5
        assert t.flush(timeout=10) is True  # sending needs no room: it makes room
        assert t.stats()["sent"] == 5
    assert [e["event"] for e in collector.wait_for(5)] == ["before"] * 5


def test_the_handler_keeps_events_in_memory_under_the_floor_and_says_why(
    tmp_path: Path, collector: DevCollector, capfd: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "queue"
    with ClientTracker(**tracker_config(collector, folder, queue_size=10**6)) as t:
        for i in range(5):
            t.track_event("before", user_id=i)
    floor = free_bytes(tmp_path) + (256 << 20)
    handler = HamustroHandler(
        **tracker_config(collector, folder, queue_size=10**6, min_free_bytes=floor)
    )
    log = logging.getLogger("tests.disk_full.floor")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.handlers[:] = [handler]
    try:
        for i in range(3):
            log.info("e", extra={"event": "kept", "user_id": i})
        assert handler.flush(timeout=5) is False  # three events wait in memory
        stats = handler.stats()
        assert stats["buffered"] == 3 and stats["dropped"] == {}
        assert "DiskSpaceLow" in (stats["storage_error"] or "")
        assert stats["pending"] == 0 and stats["sent"] == 5  # what was stored went out
        assert "min_free_bytes" in capfd.readouterr().err
        handler.tracker.queue.min_free_bytes = 0  # space is back
        assert handler.flush(timeout=10) is True
        assert handler.stats()["storage_error"] is None
    finally:
        log.handlers.clear()
        handler.close()
    received = collector.wait_for(8)
    assert sorted(e["event"] for e in received) == ["before"] * 5 + ["kept"] * 3


def mounted(tmp_path: Path, size: str) -> Iterator[Path]:
    """A real filesystem (tmpfs) of ``size``, mounted under tmp_path for the test."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB filesystem (tmpfs)."""
    yield from mounted(tmp_path, "4m")


@pytest.fixture
def disk_16m(tmp_path: Path) -> Iterator[Path]:
    """A real 16 MiB filesystem (tmpfs)."""
    yield from mounted(tmp_path, "16m")


def fill_up(disk: Path) -> Path:
    """Another file takes every byte left on ``disk`` (a real ENOSPC after it); its path."""
    filler = disk / "someone-elses-file"
    with open(filler, "wb", buffering=0) as f:
        for block in (1 << 20, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


def test_a_small_disk_filled_by_the_queue_drains_when_the_collector_is_back(
    small_disk: Path,
) -> None:
    url = dead_url()
    folder = small_disk / "queue"
    config = tracker_config(url, folder, queue_size=10**6, min_free_bytes=1 << 20)
    pad = {"pad": "f" * 1000}
    with ClientTracker(**config) as t:
        stored = 0
        error: Exception | None = None
        for i in range(20_000):
            try:
                t.track_event("e", user_id=i, params=pad)
            except Exception as exc:  # the disk is full
                error = exc
                break
            stored += 1
        assert isinstance(error, DiskSpaceLow), repr(error)  # the floor, before SQLite's ENOSPC
        assert stored > 500  # most of the disk was used for events
        assert t.stats()["pending"] == stored
        assert "DiskSpaceLow" in (t.stats()["storage_error"] or "")
        assert free_bytes(small_disk) > 0

        with collector_at(url) as collector:
            assert t.flush(timeout=120) is True
            stats = t.stats()
            assert (stats["sent"], stats["pending"]) == (stored, 0)
            # New events are accepted again, and go out.
            assert t.track_event("after", user_id=10**6) == stored + 1
            assert t.stats()["storage_error"] is None
            assert t.flush(timeout=10) is True
            received = collector.wait_for(stored + 1)
    assert sorted(e["user_id"] for e in received) == [*range(stored), 10**6]


def test_a_disk_another_file_filled_still_delivers_each_event_once(
    disk_16m: Path, collector: DevCollector, capfd: pytest.CaptureFixture[str]
) -> None:
    """Sending needs no disk: a full disk stops no delivery, and nothing raises."""
    folder = disk_16m / "queue"
    n = 5000
    config = tracker_config(collector, folder, queue_size=10**6, min_free_bytes=1 << 20)
    with ClientTracker(**config) as t:
        for i in range(n):
            t.track_event("e", user_id=i, params={"pad": "p" * 100})
        session = t.session
        filler = fill_up(disk_16m)

        assert t.flush(timeout=120) is True  # everything is sent; no exception
        received = collector.wait_for(n)
        assert Counter(e["nr"] for e in received) == Counter(range(1, n + 1))  # each once
        assert {e["session"] for e in received} == {session}
        err = capfd.readouterr().err
        # Said once, with what to do (the test is void if the disk never refused a write).
        assert len([line for line in err.splitlines() if "is full" in line]) == 1, err
        assert "free some space on that disk" in err
        assert t.stats()["pending"] > 0  # what was sent waits to be deleted

        filler.unlink()  # space is back: the owed deletes are written
        assert t.flush(timeout=30) is True
        stats = t.stats()
        assert (stats["pending"], stats["sent"], stats["resent"]) == (0, n, 0)
        assert "room again" in capfd.readouterr().err
    assert len(collector.events()) == n  # nothing sent again
