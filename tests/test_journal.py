"""The journal: records survive their writer, torn ones are refused, each is moved in once.

Real processes: writers killed with SIGKILL, a mover killed half-way through
an adoption, a real ``os.fork()``, and a real tmpfs filled to the last byte.
"""

from __future__ import annotations

import collections
import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hamustro_logging.journal import (
    START,
    JournalMeta,
    JournalWriter,
    open_segment,
    segment_names,
    unmoved_events,
)
from hamustro_logging.queue import Queue
from hamustro_logging.spool import Spool
from hamustro_logging.wire import Event, iter_frames, journal_body

META = JournalMeta("sess", b"\x0a\x01d", None, 1, moved_by_writer=False)


def stored_params(queue_dir: Path) -> collections.Counter[int]:
    """How many times each event (its ``user_id`` is its index) is in the store."""
    queue = Queue(queue_dir)
    try:
        out: collections.Counter[int] = collections.Counter()
        for _, _, _, chunk in queue.iter_events():
            for frame in iter_frames(chunk):
                out[_user_id(frame)] += 1
        return out
    finally:
        queue.close()


def _user_id(frame: bytes) -> int:
    from hamustro_logging.payload_pb2 import Collection

    (payload,) = Collection.FromString(frame).payloads
    return int(payload.user_id)


def move_all(queue_dir: Path) -> int:
    queue = Queue(queue_dir)
    spool = Spool(queue_dir, lambda: queue, lambda line: None)
    try:
        return spool.move_others().events
    finally:
        spool.close()
        queue.close()


def wait_until(condition: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "q"
    path.mkdir(mode=0o700)
    return path


def test_a_record_is_read_back_and_a_torn_one_ends_the_segment(folder: Path) -> None:
    writer = JournalWriter(folder, META)
    for i in range(3):
        writer.append(journal_body(Event(1, b"e", i)))
    name = segment_names(folder)[0]
    path = folder / "journal" / name
    assert writer.current is not None
    before = writer.current.pos
    writer.append(journal_body(Event(1, b"e", 3)))
    writer.forget()  # killed: no seal
    # Tear the last record: one byte of its body changed, as a crash mid-copy would.
    data = bytearray(path.read_bytes())
    data[before + 8 + 2] ^= 0xFF
    path.write_bytes(bytes(data))
    segment = open_segment(folder, name)
    assert segment is not None
    kinds = [kind for _, kind, _ in segment.records(START, 100)]
    segment.close()
    assert kinds == ["M", "E", "E", "E"]  # the torn fourth record is not read


def test_unmoved_events_are_counted_without_disturbing_the_writer(folder: Path) -> None:
    writer = JournalWriter(folder, META)
    for i in range(7):
        writer.append(journal_body(Event(1, b"e", i)))
    (name,) = segment_names(folder)
    assert unmoved_events(folder, {}) == {name: 7}
    queue = Queue(folder)
    spool = Spool(folder, lambda: queue, lambda line: None, batch_events=5)
    try:
        assert spool.move_others().events == 7  # (a live segment left to others)
        moved_to = {segment: offset for segment, (offset, _) in queue.journal_offsets().items()}
        assert unmoved_events(folder, moved_to) == {name: 0}
        for i in range(3):
            writer.append(journal_body(Event(1, b"e", 7 + i)))
        assert unmoved_events(folder, moved_to) == {name: 3}
        assert unmoved_events(folder, {name: None}) == {}  # finished: not counted
        writer.append(journal_body(Event(1, b"e", 10)))  # still the writer's: it locks on
        assert writer.current is not None and writer.current.path.endswith(name)
    finally:
        spool.close()
        queue.close()
        writer.close()


def test_a_damaged_record_before_the_end_sets_the_segment_aside(folder: Path) -> None:
    writer = JournalWriter(folder, META)
    for i in range(5):
        writer.append(journal_body(Event(1, b"e", i)))
    assert writer.current is not None
    path = Path(writer.current.path)
    writer.forget()  # as if killed: no seal
    data = bytearray(path.read_bytes())
    data[START + 60] ^= 0xFF  # inside the first events, with written records after it
    path.write_bytes(bytes(data))
    move_all(folder)
    assert not path.exists()
    assert path.with_name(path.name + ".damaged").exists()  # kept, never deleted


KILLED_WRITER = """
import os, signal, sys
from hamustro_logging.journal import JournalMeta, JournalWriter
from hamustro_logging.wire import Event, journal_body
meta = JournalMeta("sess", b"\\x0a\\x01d", None, 1, moved_by_writer=False)
writer = JournalWriter(sys.argv[1], meta, segment_bytes=int(sys.argv[3]))
for i in range(int(sys.argv[2])):
    writer.append(journal_body(Event(1, b"e", i)))
os.kill(os.getpid(), signal.SIGKILL)
"""


def run_killed_writer(folder: Path, n: int, segment_bytes: int = 1 << 20) -> None:
    code = KILLED_WRITER
    done = subprocess.run(
        [sys.executable, "-c", code, str(folder), str(n), str(segment_bytes)], timeout=120
    )
    assert done.returncode == -signal.SIGKILL


def test_a_killed_writers_records_are_adopted_exactly_once(folder: Path) -> None:
    run_killed_writer(folder, 5000, segment_bytes=64 << 10)  # several segments
    assert len(segment_names(folder)) > 1
    assert move_all(folder) == 5000
    assert move_all(folder) == 0  # a second mover finds nothing left
    assert segment_names(folder) == []
    assert stored_params(folder) == collections.Counter(range(5000))


MOVER = """
import sys
from hamustro_logging.queue import Queue
from hamustro_logging.spool import Spool
queue = Queue(sys.argv[1])
spool = Spool(sys.argv[1], lambda: queue, lambda line: None, batch_events=50)
print(spool.move_others().events, flush=True)
"""


def test_a_mover_killed_while_adopting_leaves_nothing_lost_nor_moved_twice(
    folder: Path,
) -> None:
    """An OOM-style death in the middle of an adoption: the next mover goes on from its offset."""
    run_killed_writer(folder, 40_000, segment_bytes=8 << 20)
    for _ in range(3):  # kill movers at different points of the move
        mover = subprocess.Popen([sys.executable, "-c", MOVER, str(folder)])
        watch = Queue(folder)
        try:
            wait_until(lambda w=watch, m=mover: w.pending_count() > 0 or m.poll() is not None)
        finally:
            watch.close()
        mover.send_signal(signal.SIGKILL)
        mover.wait(timeout=60)
    move_all(folder)
    assert segment_names(folder) == []
    assert stored_params(folder) == collections.Counter(range(40_000))


def test_two_movers_racing_move_each_record_once(folder: Path) -> None:
    run_killed_writer(folder, 20_000, segment_bytes=256 << 10)
    movers = [
        subprocess.Popen([sys.executable, "-c", MOVER, str(folder)], stdout=subprocess.PIPE)
        for _ in range(3)
    ]
    moved = [int(m.communicate(timeout=120)[0]) for m in movers]
    assert sum(moved) == 20_000
    assert stored_params(folder) == collections.Counter(range(20_000))


FORKED = """
import json, os, sys, time
from hamustro_logging.journal import JournalMeta, JournalWriter, open_segment, segment_names
from hamustro_logging.wire import Event, journal_body
meta = JournalMeta("sess", b"\\x0a\\x01d", None, 1, moved_by_writer=False)
writer = JournalWriter(sys.argv[1], meta)
writer.append(journal_body(Event(1, b"e", 1)))
parent_segment = segment_names(sys.argv[1])[0]
parent = os.getpid()
if os.fork() == 0:
    writer.forget()  # what the handler's after-fork hook does
    writer.append(journal_body(Event(1, b"e", 2)))
    deadline = time.monotonic() + 60
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.01)  # until the parent is gone
    segment = open_segment(sys.argv[1], parent_segment)
    print(json.dumps({"adoptable": segment is not None and segment.adopted}), flush=True)
    os._exit(0)
os._exit(0)  # the parent dies without closing anything; the child lives on
"""


def test_a_forked_child_lets_go_of_the_parents_segment(folder: Path) -> None:
    """The child still runs, the parent is gone: the parent's segment is free to adopt."""
    done = subprocess.run(
        [sys.executable, "-c", FORKED, str(folder)], capture_output=True, text=True, timeout=120
    )
    # (the child holds the pipe: run() returns once it printed and ended)
    assert json.loads(done.stdout) == {"adoptable": True}, done.stderr
    assert move_all(folder) == 2
    assert stored_params(folder) == collections.Counter([1, 2])


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 16 MiB tmpfs (root only; skipped where mounting is not permitted)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


FILL_WHILE_LOGGING = """
import json, logging, os, sys
from hamustro_logging import HamustroHandler
cfg = json.loads(sys.argv[1])
handler = HamustroHandler(**cfg["handler"])
log = logging.getLogger("disk")
log.addHandler(handler)
log.propagate = False
acked = 0
for i in range(cfg["n"]):
    log.warning("e", extra={"event": "e", "user_id": i})
    acked = i + 1
    if i == cfg["fill_at"]:  # another file takes every byte left
        try:  # (the close's flush may meet the full disk too)
            with open(cfg["filler"], "wb", buffering=0) as f:
                while True:
                    f.write(b"x" * 65536)
        except OSError:
            pass
stats = handler.stats()
print(json.dumps({"acked": acked, "dropped": stats["dropped"]}), flush=True)
os._exit(0)
"""


def test_a_disk_filled_while_the_journal_grows_never_faults_the_app(
    tiny_disk: Path, tmp_path: Path
) -> None:
    from .support import dead_url, tracker_config

    folder = tiny_disk / "q"
    handler = tracker_config(dead_url(), folder, on_full="drop", min_free_bytes=0)
    cfg = {"handler": handler, "n": 400_000, "fill_at": 200, "filler": str(tiny_disk / "big")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FILL_WHILE_LOGGING), json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr  # no SIGBUS, nothing raised into the app
    result = json.loads(done.stdout)
    assert result["acked"] == 400_000
    assert sum(result["dropped"].values()) > 0  # on_full applied once no segment fitted
    (tiny_disk / "big").unlink()
    move_all(folder)
    stored = stored_params(folder)
    # Every event the journal took is in the store once; the rest were counted as dropped.
    assert all(count == 1 for count in stored.values())
    assert len(stored) + sum(result["dropped"].values()) == 400_000
