"""ClientTracker against the real development collector on loopback."""

from __future__ import annotations

import io
import os
import pickle
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hamustro_logging import ClientTracker
from hamustro_logging.collector import DevCollector
from hamustro_logging.queue import Queue

from .support import TEST_SECRET, collector_at, dead_url, numbers, tracker_config

SESSION = "c3b261989df9cb95efb791759dd37e16"  # collector.md's vector for device-1/client-1


def test_session_device_hash_and_url(tmp_path: Path, collector: DevCollector) -> None:
    with ClientTracker(**tracker_config(collector, tmp_path)) as t:
        assert t.session == SESSION == t.generate_session()
        assert t.device_id == "03204de92e11fc8c528139be419065920eb83dbff1a4663bbea455aa6e9702bd"
        assert t.transport.url == collector.url + "/api/v1/track"
    with ClientTracker(**tracker_config(collector.url + "/api/v1/track/", tmp_path)) as t:
        assert t.transport.url == collector.url + "/api/v1/track"


def test_events_arrive_with_every_field(tmp_path: Path, collector: DevCollector) -> None:
    config = tracker_config(collector, tmp_path, system="Darwin", product_git_hash="abc1234")
    with ClientTracker(**config) as t:
        before = int(time.time())
        assert t.track_event("signup", user_id=7, params={"plan": "pro", "n": [1, 2]}) == 1
        assert t.track_event("login", params="raw text", is_testing=True, ip="203.0.113.9") == 2
        assert t.flush() is True
    first, second = collector.wait_for(2)
    assert first["session"] == SESSION
    assert (first["system"], first["product_git_hash"]) == ("Darwin", "abc1234")
    assert (first["event"], first["nr"], first["user_id"]) == ("signup", 1, 7)
    assert first["parameters"] == '{"plan":"pro","n":[1,2]}'
    assert before <= first["at"] <= time.time() and first["is_testing"] is False
    assert first["ip"] == "127.0.0.1"  # the address that routes to the collector
    assert (second["event"], second["user_id"], second["parameters"]) == ("login", None, "raw text")
    assert (second["ip"], second["is_testing"]) == ("203.0.113.9", True)


def test_detect_ip_off_leaves_ip_to_the_collector(tmp_path: Path, collector: DevCollector) -> None:
    with ClientTracker(**tracker_config(collector, tmp_path, detect_ip=False)) as t:
        t.track_event("e")
        t.flush()
    assert collector.wait_for(1)[0]["ip"] == ""


def test_brand_new_queue_waits_for_queue_size(tmp_path: Path, collector: DevCollector) -> None:
    with ClientTracker(**tracker_config(collector, tmp_path, queue_size=3)) as t:
        t.track_event("a")
        t.track_event("b")
        assert collector.events() == [] and t.stats()["pending"] == 2
        t.track_event("c")  # the third reaches queue_size: all three go
        assert [e["nr"] for e in collector.events()] == [1, 2, 3]
        assert t.stats()["pending"] == 0


def test_retention_trigger_sends_when_last_sync_is_old(
    tmp_path: Path, collector: DevCollector
) -> None:
    config = tracker_config(collector, tmp_path, queue_size=1000, queue_retention=0.5 / 60)
    with ClientTracker(**config) as t:
        t.track_event("a")
        assert collector.events() == []  # the new queue's retention counts from its creation
        time.sleep(0.6)
        t.track_event("b")  # last sync is now older than 0.5 s: both go
        assert [e["event"] for e in collector.events()] == ["a", "b"]
        assert t.load_last_sync_time() >= int(time.time()) - 1


def test_nr_continues_across_restarts(tmp_path: Path, collector: DevCollector) -> None:
    config = tracker_config(collector, tmp_path, queue_size=1000)
    with ClientTracker(**config) as t:
        assert [t.track_event("a") for _ in range(3)] == [1, 2, 3]
        assert t.flush()
    with ClientTracker(**config) as t:
        assert [t.track_event("b") for _ in range(2)] == [4, 5]
        assert t.load_number_per_session() == {SESSION: 5}
        assert t.flush()
    assert numbers(collector.wait_for(5)) == [(SESSION, n) for n in range(1, 6)]


def test_new_version_new_session_old_events_keep_old_attributes(
    tmp_path: Path, collector: DevCollector
) -> None:
    with ClientTracker(**tracker_config(collector, tmp_path, queue_size=1000)) as old:
        old.track_event("before-upgrade")
        old.track_event("before-upgrade")
    upgraded = tracker_config(collector, tmp_path, queue_size=1000, product_version="2.0.0")
    with ClientTracker(**upgraded) as new:
        assert new.session != SESSION
        assert new.track_event("after-upgrade") == 1
        assert {s.session: s.pending for s in new.load_collections()} == {
            SESSION: 2,
            new.session: 1,
        }
        assert new.flush()
    received = collector.wait_for(3)
    by_session = {(e["session"], e["product_version"], e["event"], e["nr"]) for e in received}
    assert by_session == {
        (SESSION, "1.0.0", "before-upgrade", 1),
        (SESSION, "1.0.0", "before-upgrade", 2),
        (new.session, "2.0.0", "after-upgrade", 1),
    }
    assert collector.answered() == {200: 2}  # one collection per session


def test_500_keeps_everything_and_a_later_run_delivers_once(
    tmp_path: Path, collector: DevCollector
) -> None:
    with DevCollector(secret=TEST_SECRET, output=io.StringIO()) as failing:
        failing.fail_next(10**6, status=500)
        with ClientTracker(**tracker_config(failing, tmp_path, queue_size=2)) as t:
            for i in range(5):
                t.track_event("e", user_id=i)
            assert t.flush() is False
            stats = t.stats()
            assert stats["pending"] == 5 and stats["failed_attempts"] >= 1
            assert "HTTP 500" in (stats["last_error"] or "")
        assert failing.events() == [] and failing.answered().get(500, 0) >= 2
    with (
        collector_at(failing.url) as fixed,  # the collector, mended, at its URL
        ClientTracker(**tracker_config(fixed, tmp_path, queue_size=2)) as t,
    ):
        assert t.flush() is True
        received = fixed.wait_for(5)
    assert numbers(received) == [(SESSION, n) for n in range(1, 6)]
    assert sorted(e["user_id"] for e in received) == [0, 1, 2, 3, 4]


def test_batches_split_by_count(tmp_path: Path, collector: DevCollector) -> None:
    with ClientTracker(
        **tracker_config(collector, tmp_path, queue_size=1000, max_batch_events=2)
    ) as t:
        for _ in range(5):
            t.track_event("e")
        assert t.flush()
    assert numbers(collector.wait_for(5)) == [(SESSION, n) for n in range(1, 6)]
    assert collector.answered() == {200: 3}


def test_wrong_secret_keeps_events_and_says_check_the_secret(
    tmp_path: Path, collector: DevCollector, capfd: pytest.CaptureFixture[str]
) -> None:
    secret = "not-the-right-secret"  # noqa: S105
    config = tracker_config(collector, tmp_path, queue_size=1, shared_secret_key=secret)
    with ClientTracker(**config) as t:
        t.track_event("e")
        t.track_event("e")
        assert t.flush() is False
        assert t.stats()["pending"] == 2
        assert secret not in repr(t)
    err = capfd.readouterr().err
    assert "405" in err and "shared_secret_key" in err
    assert secret not in err
    assert collector.answered().get(405, 0) >= 1


def test_dead_collector_does_not_raise(tmp_path: Path) -> None:
    with ClientTracker(**tracker_config(dead_url(), tmp_path, queue_size=1)) as t:
        assert t.track_event("e") == 1
        assert t.track_event("e") == 2  # the backoff skips the send: no second wait
        assert t.flush(timeout=2) is False
        assert "connection refused" in (t.stats()["last_error"] or "")


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("collector_url", "", ValueError),
        ("collector_url", "ftp://x", ValueError),
        ("shared_secret_key", "", ValueError),
        ("device_id", 3, TypeError),
        ("client_id", "", ValueError),
        ("system_version", 3, TypeError),
        ("product_version", "", ValueError),
        ("queue_size", 0, ValueError),
        ("queue_retention", -1, ValueError),
        ("timeout", (1, 0), ValueError),
    ],
)
def test_bad_constructor_argument_is_named(
    tmp_path: Path, name: str, value: object, error: type[Exception]
) -> None:
    config = tracker_config("http://127.0.0.1:9", tmp_path)
    config[name] = value
    with pytest.raises(error, match=name):
        ClientTracker(**config)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"event": ""}, "event"),
        ({"event": None}, "event"),
        ({"event": "e", "user_id": -1}, "user_id"),
        ({"event": "e", "user_id": 2**32}, "user_id"),
        ({"event": "e", "user_id": "7"}, "user_id"),
        ({"event": "e", "user_id": True}, "user_id"),
        ({"event": "e", "params": 5}, "params"),
        ({"event": "e", "params": {1: {2}}}, None),  # set → str(): accepted
        ({"event": "e", "params": "x" * (65 * 1024)}, "params"),
        ({"event": "e", "is_testing": 1}, "is_testing"),
        ({"event": "e", "ip": 5}, "ip"),
        ({"event": "e", "ip": "nope"}, "ip"),
        ({"event": "\ud800"}, "event"),
        ({"event": "e", "params": {"k": "\udcff"}}, "params"),
    ],
)
def test_bad_event_field_is_named_and_others_go_on(
    tmp_path: Path, collector: DevCollector, kwargs: dict[str, object], field: str | None
) -> None:
    with ClientTracker(**tracker_config(collector, tmp_path, queue_size=1000)) as t:
        t.track_event("before")
        if field is None:
            t.track_event(**kwargs)  # type: ignore[call-overload]
        else:
            with pytest.raises(ValueError, match=f"field '{field}'"):
                t.track_event(**kwargs)  # type: ignore[call-overload]
        t.track_event("after")
        assert t.flush()
    events = [e["event"] for e in collector.events()]
    assert events[0] == "before" and events[-1] == "after"
    assert len(events) == (2 if field else 3)


def test_queue_files_hold_no_pickle_and_no_raw_device_id(
    tmp_path: Path, collector: DevCollector
) -> None:
    with ClientTracker(**tracker_config(collector, tmp_path, queue_size=1000)) as t:
        t.track_event("e", user_id=1, params={"a": 1})
        t.track_event("e")
    assert (tmp_path.stat().st_mode & 0o777) == 0o700
    db = tmp_path / "cache.db"
    assert (db.stat().st_mode & 0o777) == 0o600
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT key, raw, mode FROM Cache").fetchall()
    assert rows and all(raw == 1 for _, raw, _ in rows)
    assert all(mode in (1, 2) for _, _, mode in rows)  # raw or binary: never 4 (pickle)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"device-1" not in data, path  # the raw device id
            assert TEST_SECRET.encode() not in data, path  # the shared secret


def test_a_tampered_pickle_in_the_queue_is_refused_not_run(tmp_path: Path) -> None:
    queue = Queue(tmp_path)
    queue.close()
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str, ...]]:
            return (os.system, (f"touch {marker}",))

    with sqlite3.connect(tmp_path / "cache.db") as con:
        con.execute(
            "INSERT INTO Cache (key, raw, store_time, expire_time, access_time, access_count,"
            " tag, size, mode, filename, value) VALUES (?, 1, 0, NULL, 0, 0, NULL, 0, 4, NULL, ?)",
            ("s/pending", pickle.dumps(Exploit())),
        )
        con.execute("DELETE FROM Cache WHERE key = 's/pending' AND mode != 4")
    queue = Queue(tmp_path)
    assert queue.pending_count() == 0  # the counter is rebuilt from the rows, not unpickled
    assert not marker.exists()
    queue.close()


def test_processes_sharing_a_folder_get_unique_numbers(
    tmp_path: Path, collector: DevCollector
) -> None:
    script = (
        "import sys\n"
        "from hamustro_logging import ClientTracker\n"
        "t = ClientTracker(sys.argv[1], 'test-secret', 'device-1', 'client-1', 'OS X 10.11',"
        " '1.0.0', queue_size=10**6, queue_dir=sys.argv[2])\n"
        "for i in range(50):\n"
        "    t.track_event('e', user_id=int(sys.argv[3]))\n"
        "t.close()\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, collector.url, str(tmp_path), str(i)])
        for i in range(4)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    with ClientTracker(**tracker_config(collector, tmp_path)) as t:
        assert t.load_number_per_session() == {SESSION: 200}
        assert t.flush()
    assert numbers(collector.wait_for(200)) == [(SESSION, n) for n in range(1, 201)]


def test_a_flood_of_bad_lines_is_held_back_and_counted() -> None:
    from hamustro_logging.report import Reporter

    out = io.StringIO()
    reporter = Reporter(stream=out)
    for i in range(100):
        reporter.once(f"bad record {i}")
    lines = out.getvalue().splitlines()
    assert len(lines) == reporter.burst == 20
    reporter._window_start -= reporter.window  # the next window starts
    reporter.once("bad record 100")
    assert out.getvalue().splitlines()[-1].endswith("(80 similar lines held back before this one)")
