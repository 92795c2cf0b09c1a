"""Issue 18: every event ends in one counted state, and goes only where it was logged for.

Real HTTP on loopback: the development collector, and where a gateway is in
the way a real reverse proxy (``tests/support.py``'s :class:`Gateway`) that
forwards the request, lets the collector store it, and answers 502 or 504
itself. Real processes where a process's life matters (a writer that still
runs, a sender that died). Each test ends with the folder's ledger adding up.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hamustro_logging import ClientTracker, HamustroHandler
from hamustro_logging.cli import main
from hamustro_logging.collector import DevCollector
from hamustro_logging.payload_pb2 import Collection
from hamustro_logging.queue import Queue
from hamustro_logging.reader import QueueReader
from hamustro_logging.tracker import accepted_destinations, destination_id
from hamustro_logging.transport import _without_userinfo as without_userinfo
from hamustro_logging.transport import track_url
from hamustro_logging.wire import md5hex, sha256hex

from ..support import (
    TEST_SECRET,
    Gateway,
    assert_ledger_adds_up,
    numbers,
    tracker_config,
)

ROOT = Path(__file__).resolve().parents[2]


def flush_until_done(flush: Any, tries: int = 20) -> None:
    """Flush until it says everything is delivered (each try is one forced pass)."""
    for _ in range(tries):
        if flush(timeout=10):
            return
    raise AssertionError(f"still not delivered after {tries} flushes")


def duplicates(events: list[dict[str, Any]]) -> int:
    """Copies beyond the first of each (session, nr) the collector stored."""
    return len(events) - len(set(numbers(events)))


@pytest.fixture
def handler_log(request: pytest.FixtureRequest) -> Iterator[logging.Logger]:
    """A logger of this test's own (no propagation); its handlers are closed afterwards."""
    log = logging.getLogger(f"tests.accounting.{request.node.name}")
    log.setLevel(logging.INFO)
    log.propagate = False
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


# -- possibly stored means counted ---------------------------------------------------------


@pytest.mark.parametrize("status", [502, 504])
@pytest.mark.parametrize("kind", ["tracker", "handler"])
def test_a_gateway_error_after_the_collector_stored_counts_every_copy_in_resent(
    tmp_path: Path,
    collector: DevCollector,
    handler_log: logging.Logger,
    status: int,
    kind: str,
) -> None:
    """The gateway forwards 3 requests and answers `status` to each: 600 copies, all counted.

    Before: 800 payloads stored, 600 duplicates, resent == 0 (any status
    took the attempt mark back).
    """
    folder = tmp_path / "q"
    with Gateway(collector.url, fail_after_forwarding=3, status=status) as gateway:
        config = tracker_config(gateway.url, folder, queue_size=10**6)
        if kind == "tracker":
            with ClientTracker(**config) as t:
                for i in range(200):
                    t.track_event("e", user_id=i)
                flush_until_done(t.flush)
                stats = t.stats()
        else:
            handler = HamustroHandler(**config)
            handler_log.addHandler(handler)
            for i in range(200):
                handler_log.info("e", extra={"event": "e", "user_id": i})
            flush_until_done(handler.flush)
            stats = handler.stats()
    received = collector.wait_for(800)
    assert len(received) == 800 and len(set(numbers(received))) == 200
    assert duplicates(received) == 600
    assert stats["resent"] == 600  # this process's count
    assert stats["sent"] == 200
    ledger = assert_ledger_adds_up(folder, 200)
    assert (ledger.resent, ledger.sent) == (600, 200)  # the folder's
    assert stats["folder"]["resent"] == 600


def test_answers_that_say_nothing_was_stored_take_the_mark_back(
    tmp_path: Path, collector: DevCollector
) -> None:
    """405 (a signature refused), 401, 403, 415 from the collector: no copy, none counted."""
    for status in (405, 401, 403, 415):
        collector.fail_next(1, status)
    folder = tmp_path / "q"
    with ClientTracker(**tracker_config(collector, folder, queue_size=10**6)) as t:
        for i in range(10):
            t.track_event("e", user_id=i)
        flush_until_done(t.flush)
        assert t.stats()["resent"] == 0
    assert duplicates(collector.wait_for(10)) == 0
    ledger = assert_ledger_adds_up(folder, 10)
    assert (ledger.resent, ledger.sent) == (0, 10)


def test_a_timeout_counts_the_next_send_though_the_collector_never_stored(
    tmp_path: Path, collector: DevCollector
) -> None:
    """No answer: the client cannot know, so it counts (resent >= duplicates, here 5 >= 0).

    The collector stores a hung request only after its 30 s wait, i.e. never
    while this test runs: the copy counted was not made.
    """
    collector.hang_next(1, seconds=30)
    folder = tmp_path / "q"
    config = tracker_config(collector, folder, queue_size=10**6, timeout=(0.5, 0.5))
    with ClientTracker(**config) as t:
        for i in range(5):
            t.track_event("e", user_id=i)
        flush_until_done(t.flush)
        assert t.stats()["resent"] == 5
    assert duplicates(collector.wait_for(5)) == 0
    ledger = assert_ledger_adds_up(folder, 5)
    assert ledger.resent == 5


def test_a_dropped_connection_after_storing_is_one_counted_copy(
    tmp_path: Path, collector: DevCollector
) -> None:
    collector.accept_then_drop_next(2)  # stored twice, never answered
    folder = tmp_path / "q"
    with ClientTracker(**tracker_config(collector, folder, queue_size=10**6)) as t:
        for i in range(7):
            t.track_event("e", user_id=i)
        flush_until_done(t.flush)
        assert t.stats()["resent"] == 14
    received = collector.wait_for(21)
    assert duplicates(received) == 14
    assert assert_ledger_adds_up(folder, 7).resent == 14


# -- the rejected area and dropped events are counted ------------------------------------


def test_refusals_and_drops_are_counted_by_reason(tmp_path: Path, collector: DevCollector) -> None:
    """400 alone, 413 alone (a proxy's body limit), a full queue: each in its place."""
    folder = tmp_path / "q"
    collector.max_body = 700  # a proxy in front: the big event is refused alone
    config = tracker_config(collector, folder, queue_size=10**6, max_queue_events=12)
    with ClientTracker(**config) as t:
        for i in range(10):
            t.track_event("e", user_id=i)
        t.track_event("big", params={"pad": "x" * 2000})
        t.track_event("e", user_id=10)
        for _ in range(3):
            with pytest.raises(Exception, match="full"):
                t.track_event("over")
        flush_until_done(t.flush)
    ledger = assert_ledger_adds_up(folder, 15)
    assert ledger.rejected == {"413": 1}
    assert ledger.dropped == {"queue_full": 3}
    assert (ledger.sent, ledger.stored) == (11, 12)
    assert main(["retry-rejected", "--queue-dir", str(folder)]) == 0
    ledger = assert_ledger_adds_up(folder, 15)
    assert (ledger.retried, ledger.rejected) == (1, {"413": 1})


# -- the destination is everything that decides where a request goes ---------------------


def tenant_of(headers: dict[str, str], by: str) -> str:
    if by == "header":
        return headers["X-Tenant"]
    scheme, _, value = headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    return base64.b64decode(value).decode().partition(":")[0]


def every_file_under(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.rglob("*") if p.is_file())


@pytest.mark.parametrize("by", ["header", "userinfo"])
@pytest.mark.parametrize("kind", ["tracker", "handler"])
def test_two_tenants_on_the_default_folder_never_send_each_others_events(
    tmp_path: Path,
    collector: DevCollector,
    handler_log: logging.Logger,
    monkeypatch: pytest.MonkeyPatch,
    by: str,
    kind: str,
) -> None:
    """Same client_id, URL and key; told apart by `X-Tenant` or by the URL's user.

    Before: one default folder, one destination: tenant A's events went out
    with B's header (or B's credentials), whichever flushed first.
    """
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tenants = ("tenant-alpha", "tenant-bravo")
    password = {"tenant-alpha": "pw-alpha-93f1c2", "tenant-bravo": "pw-bravo-5d7e08"}
    with Gateway(collector.url) as gateway:
        made: list[Any] = []
        for tenant in tenants:
            host = gateway.url.removeprefix("http://")
            if by == "header":
                config = tracker_config(gateway.url, tmp_path, queue_size=10**6)
                config["headers"] = {"X-Tenant": tenant, "X-Token": password[tenant]}
            else:
                url = f"http://{tenant}:{password[tenant]}@{host}"
                config = tracker_config(url, tmp_path, queue_size=10**6)
            del config["queue_dir"]  # the default folder, as most apps have it
            made.append(ClientTracker(**config) if kind == "tracker" else HamustroHandler(**config))
        try:
            for i in range(20):
                for tenant, thing in zip(tenants, made, strict=True):
                    if kind == "tracker":
                        thing.track_event("for_" + tenant, user_id=i)
                    else:
                        handler_log.handlers[:] = [thing]
                        handler_log.info("e", extra={"event": "for_" + tenant, "user_id": i})
            for thing in made:  # each looks at the whole folder
                thing.flush(timeout=10)
            for thing in made:
                flush_until_done(thing.flush)
            folders = {str(thing.tracker.queue_dir if kind == "handler" else thing.queue_dir)
                       for thing in made}  # fmt: skip
        finally:
            handler_log.handlers.clear()
            for thing in made:
                thing.close()
        sent_as: Counter[tuple[str, str]] = Counter()
        for headers, body in gateway.requests:
            for payload in Collection.FromString(body).payloads:
                sent_as[(tenant_of(headers, by), payload.event)] += 1
    assert sent_as == {(t, "for_" + t): 20 for t in tenants}
    assert len(collector.wait_for(40)) == 40
    # The secret parts are only ever stored hashed: not in the folder, not in its name.
    stored = every_file_under(tmp_path / "cache") + "".join(folders).encode()
    for tenant in tenants:
        assert password[tenant].encode() not in stored
    for folder in folders:
        assert_ledger_adds_up(Path(folder), 40 if len(folders) == 1 else 20)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "https://user:pw@c.example/"])
def test_the_destination_keeps_earlier_versions_folders_working(url: str) -> None:
    """Without a user part or headers the id is the one 0.2.0 stored; with them, 0.2.0's id
    is still sent (nothing tells apart the events logged before the upgrade)."""
    secret_hash = sha256hex("hamustro-logging destination:" + TEST_SECRET)
    before = md5hex(f"{without_userinfo(track_url(url))}\n{secret_hash}")[:16]  # 0.2.0's
    plain = destination_id(url, TEST_SECRET)
    tenant = destination_id(url, TEST_SECRET, {"X-Tenant": "a"})
    assert (plain == before) is ("@" not in url)
    assert tenant != before
    assert accepted_destinations(url, TEST_SECRET, {"X-Tenant": "a"}) == {tenant, before}


# -- rebind never sets events aside --------------------------------------------------------

OLD_KEY, NEW_KEY = "old-key", "new-key"

#: The old app, still running after the rotation: logs N events each time it
#: reads a line "log N" on stdin, says "logged" when they are on disk, and ends on "exit".
OLD_APP = """
import sys
from hamustro_logging import ClientTracker
url, folder, key = sys.argv[1:4]
t = ClientTracker(url, key, "device-1", "client-1", "OS X 10.11", "1.0.0",
                  queue_dir=folder, queue_size=10**6, backoff_base=0.05, backoff_cap=0.5)
print("ready", flush=True)
for line in sys.stdin:
    word, _, n = line.strip().partition(" ")
    if word == "exit":
        break
    for i in range(int(n)):
        t.track_event("old_app", user_id=1000 + i)
    t.flush(timeout=2)  # with the old key: refused (405), kept
    print("logged", flush=True)
t.close()
"""


class OldApp:
    """A process of its own that logs with the old key (a rolling rotation)."""

    def __init__(self, tmp_path: Path, url: str, folder: Path) -> None:
        script = tmp_path / "old_app.py"
        script.write_text(OLD_APP)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.process = subprocess.Popen(
            [sys.executable, str(script), url, str(folder), OLD_KEY],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
        )  # fmt: skip
        self.expect("ready")

    def expect(self, word: str) -> None:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        assert line == word, f"the old app said {line!r}, not {word!r}"

    def log(self, n: int) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"log {n}\n")
        self.process.stdin.flush()
        self.expect("logged")

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write("exit\n")
            self.process.stdin.flush()
            self.process.wait(timeout=60)


def status_json(folder: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["status", "--queue-dir", str(folder), "--json"]) == 0
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    return doc


def test_events_logged_for_the_old_key_after_a_rebind_wait_for_it_and_a_second_rebind_moves_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: the old app's later events lost their header row and were set aside (0 of 50)."""
    folder = tmp_path / "queue"
    with DevCollector(secret=NEW_KEY, output=io.StringIO()) as collector:  # the key was rotated
        old = OldApp(tmp_path, collector.url, folder)
        try:
            old.log(5)
            rebind = ["rebind", "--queue-dir", str(folder), "--collector-url", collector.url]
            assert main([*rebind, "--shared-secret-key", NEW_KEY]) == 0
            old.log(50)  # after the rebind, still with the old key
            config = tracker_config(collector, folder, queue_size=10**6, shared_secret_key=NEW_KEY)
            with ClientTracker(**config) as new:
                assert new.flush(timeout=10) is False  # the 50 wait for the old key
                new.track_event("new_app", user_id=1)
                assert new.flush(timeout=10) is False
            assert len(collector.wait_for(6)) == 6
            doc = status_json(folder, capsys)
            assert (doc["pending"], doc["set_aside"], doc["aside_in_queue"]) == (50, 0, 0)
            assert doc["waiting_after_rebind"] == 50
            assert doc["rebind_command"].startswith("hamustro-logging rebind --queue-dir")
            capsys.readouterr()
            assert main(["status", "--queue-dir", str(folder)]) == 0
            assert "To move them too: hamustro-logging rebind" in capsys.readouterr().out
            assert main([*rebind, "--shared-secret-key", NEW_KEY]) == 0  # moves them too
            assert "50 events now bound to" in capsys.readouterr().out
            with ClientTracker(**config) as new:
                assert new.flush(timeout=10) is True
        finally:
            old.stop()
        received = collector.wait_for(56)
    assert len(received) == 56 and duplicates(received) == 0
    assert sorted(e["user_id"] for e in received if e["event"] == "old_app") == sorted(
        [1000 + i for i in range(5)] + [1000 + i for i in range(50)]
    )
    ledger = assert_ledger_adds_up(folder, 56)
    assert (ledger.set_aside, ledger.sent) == (0, 56)


WRITER = """
import sys
from hamustro_logging import ClientTracker
url, folder = sys.argv[1:3]
t = ClientTracker(url, "test-secret", "device-1", "client-1", "OS X 10.11", "2.0.0",
                  queue_dir=folder, queue_size=10**6)
for i in range(4):
    t.track_event("writer", user_id=i)
print("logged", flush=True)
sys.stdin.readline()  # alive until told (or killed)
"""


def test_a_missing_header_row_of_a_group_whose_writer_runs_is_not_damage(
    tmp_path: Path, collector: DevCollector
) -> None:
    """Set aside only once its writer is gone (SIGKILL), never while it still runs."""
    folder = tmp_path / "queue"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    writer = subprocess.Popen(
        [sys.executable, str(script), collector.url, str(folder)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "logged"
        queue = Queue(folder)
        try:
            ((session, hid),) = {tuple(k.split("/")[1:3]) for k in queue._keys_with("h/")}
            with queue._transaction():
                queue._cache.delete(f"h/{session}/{hid}")
            with ClientTracker(**tracker_config(collector, folder, queue_size=10**6)) as t:
                t.flush(timeout=10)
                assert t.stats()["aside_in_queue"] == 0  # its writer runs: left alone
                assert t.stats()["pending"] == 4
                writer.send_signal(signal.SIGKILL)
                writer.wait(timeout=30)
                t.flush(timeout=10)
                stats = t.stats()
            assert stats["pending"] == 0
            assert stats["aside_in_queue"] >= 1  # now damage: nobody has its header
        finally:
            queue.close()
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(timeout=30)
    ledger = assert_ledger_adds_up(folder, 4)
    assert ledger.set_aside == 4


# -- what a process counted outlives it ----------------------------------------------------

FLUSHER = """
import sys
from hamustro_logging import ClientTracker
url, folder = sys.argv[1:3]
with ClientTracker(url, "test-secret", "device-1", "client-1", "OS X 10.11", "1.0.0",
                   queue_dir=folder, queue_size=10**6, timeout=float(sys.argv[3])) as t:
    print("flushing", flush=True)
    print(t.flush(timeout=float(sys.argv[3])), t.stats()["resent"], flush=True)
"""


def run_flusher(tmp_path: Path, url: str, folder: Path, timeout: float) -> subprocess.Popen[str]:
    script = tmp_path / "flusher.py"
    script.write_text(FLUSHER)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, str(script), url, str(folder), str(timeout)],
        stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip


def test_duplicates_a_process_sent_are_in_the_folder_after_it_ended(
    tmp_path: Path, collector: DevCollector
) -> None:
    """A worker resends a batch whose 200 was lost, and ends: its count stays in the folder."""
    folder = tmp_path / "queue"
    collector.accept_then_drop_next(1)
    with ClientTracker(**tracker_config(collector, folder, queue_size=10**6)) as t:
        for i in range(3):
            t.track_event("e", user_id=i)
        assert t.flush(timeout=10) is False  # stored, never answered
    worker = run_flusher(tmp_path, collector.url, folder, 10)
    out, _ = worker.communicate(timeout=60)
    assert out.split()[-2:] == ["True", "3"]  # the worker counted 3, and ended
    assert duplicates(collector.wait_for(6)) == 3
    with QueueReader(folder) as reader:
        assert reader.ledger().resent == 3
    assert_ledger_adds_up(folder, 3)


def test_a_sender_killed_mid_resend_leaves_its_count(
    tmp_path: Path, collector: DevCollector
) -> None:
    """Killed while resending: counted at the claim, so the count survives the SIGKILL.

    resent 6 >= duplicates 3: the killed send's copy was never stored (the
    collector stores a hung request only after 30 s), but nobody could know.
    """
    folder = tmp_path / "queue"
    collector.accept_then_drop_next(1)
    with ClientTracker(**tracker_config(collector, folder, queue_size=10**6)) as t:
        for i in range(3):
            t.track_event("e", user_id=i)
        assert t.flush(timeout=10) is False
    collector.hang_next(1, seconds=30)
    worker = run_flusher(tmp_path, collector.url, folder, 30)
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "flushing"
        deadline = time.monotonic() + 30
        while collector.faults_left():  # until its request is at the collector, hanging
            assert time.monotonic() < deadline, "the worker never sent"
            time.sleep(0.02)
        assert _in_flight(folder)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=30)
    with QueueReader(folder) as reader:
        assert reader.ledger().resent == 3  # the killed process's claim
    with ClientTracker(**tracker_config(collector, folder, queue_size=10**6)) as t:
        assert t.flush(timeout=10) is True  # its lease was freed at once: its owner is dead
    received = collector.wait_for(6)
    ledger = assert_ledger_adds_up(folder, 3)
    assert ledger.resent == 6
    assert 3 <= duplicates(received) <= ledger.resent


def _in_flight(folder: Path) -> bool:
    with QueueReader(folder) as reader:
        return any(s.leased for s in reader.sessions())


def test_handler_stats_show_this_process_and_the_folder(
    tmp_path: Path, collector: DevCollector, handler_log: logging.Logger
) -> None:
    folder = tmp_path / "q"
    with ClientTracker(**tracker_config(collector, folder, queue_size=10**6)) as other:
        other.track_event("by_another_process")
        assert other.flush(timeout=10) is True
    handler = HamustroHandler(**tracker_config(collector, folder, queue_size=10**6))
    handler_log.addHandler(handler)
    handler_log.info("e", extra={"event": "mine"})
    assert handler.flush(timeout=10) is True
    stats = handler.stats()
    assert (stats["sent"], stats["folder"]["sent"]) == (1, 2)
    assert {"stored", "sent", "resent", "rejected", "set_aside", "dropped"} <= set(stats["folder"])
    assert_ledger_adds_up(folder, 2)


def test_a_folder_of_an_earlier_version_starts_its_ledger_from_what_it_holds(
    tmp_path: Path, collector: DevCollector
) -> None:
    folder = tmp_path / "q"
    with ClientTracker(**tracker_config(collector, folder, queue_size=10**6)) as t:
        for i in range(4):
            t.track_event("e", user_id=i)
    con = sqlite3.connect(folder / "cache.db")
    with con:
        con.execute("DELETE FROM Cache WHERE key LIKE 's/ledger/%'")  # as 0.2.0 left it
    con.close()
    with ClientTracker(**tracker_config(collector, folder, queue_size=10**6)) as t:
        assert t.flush(timeout=10) is True
    ledger = assert_ledger_adds_up(folder, 4)
    assert (ledger.stored, ledger.sent) == (4, 4)
