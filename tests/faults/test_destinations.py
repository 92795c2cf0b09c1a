"""Issue 9: two deployments on one host never send each other's events.

Two real development collectors on loopback stand for production and staging.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from hamustro_logging import ClientTracker, HamustroHandler
from hamustro_logging.cli import main
from hamustro_logging.collector import DevCollector

from ..support import TEST_SECRET, assert_ledger_adds_up, collector_at, numbers, tracker_config


@pytest.fixture
def other_collector() -> Iterator[DevCollector]:
    """A second collector: another deployment (staging, say), with the same secret."""
    with DevCollector(secret=TEST_SECRET, output=io.StringIO()) as running:
        yield running


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger(f"tests.destinations.{name}")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.handlers[:] = [handler]
    return log


def test_a_folder_shared_by_two_collectors_delivers_each_event_to_its_own(
    tmp_path: Path,
    collector: DevCollector,
    other_collector: DevCollector,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Same client_id, same session, same queue_dir, two collectors: delayed, never misdelivered."""
    folder = tmp_path / "shared"
    # Durable: every event is on disk when emit returns, so each sender meets the other's.
    a = HamustroHandler(**tracker_config(collector, folder, queue_size=10**6, durable=True))
    b = HamustroHandler(**tracker_config(other_collector, folder, queue_size=10**6, durable=True))
    log_a, log_b = _logger("a", a), _logger("b", b)
    try:
        for i in range(40):
            log_a.info("e", extra={"event": "for_a", "user_id": i})
            log_b.info("e", extra={"event": "for_b", "user_id": i})
        for _ in range(2):  # each sender looks at the whole folder, twice
            a.flush(timeout=10)
            b.flush(timeout=10)
        received_a = collector.wait_for(40)
        received_b = other_collector.wait_for(40)
        assert a.stats()["pending"] == b.stats()["pending"] == 0
    finally:
        log_a.handlers.clear()
        log_b.handlers.clear()
        a.close()
        b.close()
    assert {e["event"] for e in received_a} == {"for_a"}
    assert {e["event"] for e in received_b} == {"for_b"}
    assert sorted(e["user_id"] for e in received_a) == list(range(40))
    assert sorted(e["user_id"] for e in received_b) == list(range(40))
    # One session, one counter: the two deployments never share a number.
    assert not set(numbers(received_a)) & set(numbers(received_b))
    assert assert_ledger_adds_up(folder, 80).sent == 80
    err = capfd.readouterr().err
    # Said when a sender meets the other's pending events (with the journal each
    # handler may have sent its own before the other looks: then never), and
    # then once per group and sender, not once per pass.
    assert err.count("logged for another collector or key") <= 2


def test_a_sender_with_another_key_leaves_the_events_alone(
    tmp_path: Path, collector: DevCollector
) -> None:
    """The key is part of the destination: a rotated secret never sends old events signed anew."""
    folder = tmp_path / "shared"
    with ClientTracker(**tracker_config(collector, folder, queue_size=10**6)) as old:
        for i in range(5):
            old.track_event("old_key", user_id=i)
    other_key = "other-key"  # a second key: another destination
    config = tracker_config(collector, folder, queue_size=10**6, shared_secret_key=other_key)
    with ClientTracker(**config) as new:
        new.track_event("new_key")
        new.flush(timeout=10)
        assert new.stats()["sent"] == 0  # its own event is refused (405), the old ones untouched
        assert new.queue.pending_count() == 6
    with ClientTracker(**tracker_config(collector, folder, queue_size=10**6)) as old:
        old.flush(timeout=10)
    assert sorted(e["user_id"] for e in collector.wait_for(5)) == list(range(5))
    assert {e["event"] for e in collector.events()} == {"old_key"}
    assert assert_ledger_adds_up(folder, 6).sent == 5  # the new key's event waits for it


def test_the_default_folder_depends_on_the_collector(
    tmp_path: Path,
    collector: DevCollector,
    other_collector: DevCollector,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    config_a = tracker_config(collector, tmp_path, queue_size=10**6)
    config_b = tracker_config(other_collector, tmp_path, queue_size=10**6)
    del config_a["queue_dir"], config_b["queue_dir"]
    with ClientTracker(**config_a) as a, ClientTracker(**config_b) as b:
        assert a.queue_dir != b.queue_dir
        for folder in (a.queue_dir, b.queue_dir):
            assert folder.parent == tmp_path / "cache" / "hamustro-logging"
        for i in range(5):
            a.track_event("for_a", user_id=i)
            b.track_event("for_b", user_id=i)
        assert a.flush(timeout=10) is True
        assert b.flush(timeout=10) is True
    assert {e["event"] for e in collector.wait_for(5)} == {"for_a"}
    assert {e["event"] for e in other_collector.wait_for(5)} == {"for_b"}
    assert len(collector.events()) == len(other_collector.events()) == 5
    assert assert_ledger_adds_up(a.queue_dir, 5).sent == 5
    assert assert_ledger_adds_up(b.queue_dir, 5).sent == 5


OLD_KEY, NEW_KEY = "old-key", "new-key"


def test_after_a_key_rotation_rebind_sends_the_old_events_with_the_new_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The collector now takes only the new key: `hamustro-logging rebind` moves the backlog."""
    folder = tmp_path / "queue"
    with DevCollector(secret=OLD_KEY, output=io.StringIO()) as before:
        config = tracker_config(before, folder, queue_size=10**6, shared_secret_key=OLD_KEY)
        with ClientTracker(**config) as old:
            for i in range(5):
                old.track_event("logged_with_the_old_key", user_id=i)
            old.queue.claim("a-sender-of-the-old-key", lease_seconds=3600, max_events=1)
        url = before.url
    with collector_at(url, secret=NEW_KEY) as after:  # the key was rotated
        config = tracker_config(url, folder, queue_size=10**6, shared_secret_key=NEW_KEY)
        with ClientTracker(**config) as new:
            assert new.flush(timeout=10) is False  # the old events wait for the old key
            assert new.queue.pending_count() == 5 and after.events() == []
        args = ["--queue-dir", str(folder), "--collector-url", url]
        assert main(["rebind", *args, "--shared-secret-key", NEW_KEY]) == 0
        assert "5 events now bound to" in capsys.readouterr().out
        with ClientTracker(**config) as new:
            assert new.flush(timeout=10) is True
            assert new.stats()["resent"] == 5  # the chunk claimed before may have gone out
        events = after.wait_for(5)
    assert sorted(e["user_id"] for e in events) == list(range(5))
    assert sorted(e["nr"] for e in events) == [1, 2, 3, 4, 5]  # the same numbers, once each
    assert assert_ledger_adds_up(folder, 5).resent == 5
