"""The ``hamustro-logging`` command, against the real development collector on loopback.

``status``, ``export``, ``send-test``, ``collector`` and every ``--help`` run as real
subprocesses of ``python -m hamustro_logging``; the rest call ``main([...])``
in-process. Queue folders live in ``tmp_path``; no HAMUSTRO_* variable of the
environment running the tests leaks in.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hamustro_logging import ClientTracker, default_queue_dir
from hamustro_logging.cli import main
from hamustro_logging.collector import DevCollector
from hamustro_logging.queue import Queue
from hamustro_logging.wire import Event, session_id, sha256hex

from .support import TEST_SECRET, collector_at, dead_url, numbers, tracker_config

ROOT = Path(__file__).resolve().parents[1]
SESSION = session_id(sha256hex("device-1"), "client-1", "OS X 10.11", "1.0.0")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No HAMUSTRO_* from outside; default queue folders under tmp_path."""
    for name in list(os.environ):
        if name.startswith("HAMUSTRO_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def cli_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    """The environment of a CLI subprocess: this one's, cleaned, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAMUSTRO_")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    env["PYTHONPATH"] = str(ROOT)
    env.update(variables)
    return env


def config_env(url: str, queue_dir: Path, secret: str = TEST_SECRET) -> dict[str, str]:
    """The tracker configuration as HAMUSTRO_* variables (tracker_config's values)."""
    return {
        "HAMUSTRO_COLLECTOR_URL": url,
        "HAMUSTRO_SHARED_SECRET_KEY": secret,
        "HAMUSTRO_DEVICE_ID": "device-1",
        "HAMUSTRO_CLIENT_ID": "client-1",
        "HAMUSTRO_SYSTEM_VERSION": "OS X 10.11",
        "HAMUSTRO_PRODUCT_VERSION": "1.0.0",
        "HAMUSTRO_QUEUE_DIR": str(queue_dir),
    }


def config_args(url: str, queue_dir: Path, secret: str = TEST_SECRET) -> list[str]:
    """The tracker configuration as command-line options."""
    args: list[str] = []
    for name, value in config_env(url, queue_dir, secret).items():
        args += ["--" + name.removeprefix("HAMUSTRO_").lower().replace("_", "-"), value]
    return args


def flush_args(url: str, queue_dir: Path, secret: str = TEST_SECRET) -> list[str]:
    """All that ``flush`` needs: the folder, the collector's URL and the secret."""
    return ["--collector-url", url, "--shared-secret-key", secret, "--queue-dir", str(queue_dir)]


def run_cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    """``python -m hamustro_logging ARGS`` as a subprocess; the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "hamustro_logging", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env if env is not None else cli_env(tmp_path),
        timeout=60,
        check=False,
    )


def fill(collector: DevCollector | str, queue_dir: Path, n: int, **overrides: Any) -> str:
    """Queue ``n`` events (none sent: queue_size is huge); return their session.

    One event per stored chunk (max_batch_events=1), so the tests can claim
    and refuse exactly the events they name.
    """
    overrides.setdefault("max_batch_events", 1)
    config = tracker_config(collector, queue_dir, queue_size=10**6, **overrides)
    with ClientTracker(**config) as tracker:
        for i in range(n):
            tracker.track_event("order_placed", user_id=i, params={"i": i})
        return tracker.session


def queue_state(queue_dir: Path) -> tuple[int, int, dict[str, int]]:
    """(pending, rejected, last numbers) of a queue folder."""
    queue = Queue(queue_dir)
    try:
        return queue.pending_count(), queue.rejected_count(), queue.last_numbers()
    finally:
        queue.close()


def reject_first(queue_dir: Path, max_events: int) -> tuple[str, int]:
    """Claim the oldest events and settle them as refused (400); (session, how many)."""
    queue = Queue(queue_dir)
    try:
        batch = queue.claim("test", lease_seconds=60, max_events=max_events)
        assert batch is not None
        queue.settle(batch, [False] * batch.count)
        return batch.session, batch.count
    finally:
        queue.close()


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


# -- help and usage ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "mentions"),
    [
        ([], "retry-rejected"),
        (["status"], "--json"),
        (["flush"], "HAMUSTRO_SHARED_SECRET_KEY"),
        (["send-test"], "--event"),
        (["export"], "--rejected"),
        (["retry-rejected"], "--client-id"),
        (["collector"], "--secret"),  # the development collector's own help
    ],
)
def test_every_command_has_help(tmp_path: Path, command: list[str], mentions: str) -> None:
    done = run_cli(tmp_path, *command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:")
    assert mentions in done.stdout
    assert done.stderr == ""


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([], "say which command"),
        (["status", "--queue-dir", "q", "--bogus"], "unrecognized arguments: --bogus"),
        (["status", "--queue-dir", "q", "--client-id", "c"], "not allowed with"),
        (["status"], "--queue-dir DIR or --client-id ID"),
        (["send-test", *config_args("ftp://h", Path("q"))], "http:// or https://"),
        (
            ["send-test", *config_args("http://h", Path("q")), "--timeout", "soon"],
            "HAMUSTRO_TIMEOUT",
        ),
        (["send-test", *config_args("http://h", Path("q")), "--event", ""], "'event'"),
    ],
)
def test_usage_errors_exit_2_with_one_clear_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err
    assert "Traceback" not in err


# -- status ------------------------------------------------------------------------------


def test_status_table_and_json_give_the_same_numbers(
    tmp_path: Path, collector: DevCollector
) -> None:
    queue_dir = tmp_path / "q"
    fill(collector, queue_dir, 5)
    fill(collector, queue_dir, 3, product_version="2.0.0")
    rejected_session, rejected = reject_first(queue_dir, max_events=2)
    queue = Queue(queue_dir)
    leased = queue.claim("other-sender", lease_seconds=60, max_events=1)
    assert leased is not None and leased.session == rejected_session
    pending_bytes = queue.pending_bytes()
    queue.close()
    other_session = session_id(sha256hex("device-1"), "client-1", "OS X 10.11", "2.0.0")
    total = {SESSION: 5, other_session: 3}

    done = run_cli(tmp_path, "status", "--queue-dir", str(queue_dir), "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert (doc["pending"], doc["rejected_in_queue"], doc["pending_bytes"]) == (
        6,
        2,
        pending_bytes,
    )
    # The folder's ledger, at top level (docs/stats.md): 8 stored, 2 refused, 1 leased.
    ledger = {k: doc[k] for k in ("stored", "sent", "rejected", "set_aside", "dropped")}
    assert ledger == {"stored": 8, "sent": 0, "rejected": 2, "set_aside": 0, "dropped": 0}
    assert (doc["rejected_by_reason"], doc["resent"], doc["unaccounted"]) == ({"400": 2}, 0, 0)
    assert doc["waiting_after_rebind"] == 0 and doc["rebind_command"] is None
    assert doc["bytes_on_disk"] > pending_bytes > 0
    assert 0 <= doc["last_sync_age_seconds"] < 60
    assert doc["sessions_seen"] == 2
    rows = {row["session"]: row for row in doc["sessions"]}
    assert set(rows) == set(total)
    for session, row in rows.items():
        ours = session == rejected_session
        assert row["pending"] == total[session] - (rejected if ours else 0)
        assert row["leased"] == (1 if ours else 0)
        assert row["rejected"] == (rejected if ours else 0)
        assert row["last_nr"] == total[session]
        assert row["oldest_nr"] == (rejected + 1 if ours else 1)
        assert 0 <= row["oldest_age_seconds"] < 60
        assert row["oldest_at_utc"].endswith("Z")

    done = run_cli(tmp_path, "status", "--queue-dir", str(queue_dir))
    assert done.returncode == 0, done.stderr
    table = done.stdout
    assert f"pending       6 events, {pending_bytes} bytes" in table
    assert "rejected      2 events in the rejected area" in table
    assert "  stored      8 events" in table
    assert "  rejected    2 (400 2); retried 0" in table
    assert f"on disk       {doc['bytes_on_disk']} bytes" in table
    for session, row in rows.items():
        line = next(line for line in table.splitlines() if line.startswith(session))
        cells = line.split()
        numbers_shown = [int(cells[1]), int(cells[2]), int(cells[3]), int(cells[-1])]
        assert numbers_shown == [row["pending"], row["leased"], row["rejected"], row["last_nr"]]


def test_status_finds_the_default_folder_of_a_client_id(
    tmp_path: Path, collector: DevCollector
) -> None:
    # The autouse fixture points XDG_CACHE_HOME into tmp_path, as cli_env does.
    folder = default_queue_dir("client-1", collector.url)
    fill(collector, folder, 2)
    for args, variables in [
        (["--client-id", "client-1"], {"HAMUSTRO_COLLECTOR_URL": collector.url}),
        ([], {"HAMUSTRO_CLIENT_ID": "client-1", "HAMUSTRO_COLLECTOR_URL": collector.url}),
    ]:
        env = cli_env(tmp_path, **variables)
        done = run_cli(tmp_path, "status", "--json", *args, env=env)
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert doc["queue_dir"] == str(folder)
        assert doc["pending"] == 2


def test_status_of_a_missing_folder_exits_2_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    done = run_cli(tmp_path, "status", "--queue-dir", str(missing))
    assert done.returncode == 2
    assert done.stderr == f"hamustro-logging: no queue folder at {missing} (nothing was created)\n"
    assert done.stdout == ""
    assert not missing.exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    done = run_cli(tmp_path, "status", "--queue-dir", str(empty))
    assert done.returncode == 2
    assert "is not a queue folder" in done.stderr
    assert list(empty.iterdir()) == []


@pytest.mark.parametrize("command", [["export"], ["export", "--rejected"], ["retry-rejected"]])
def test_other_readers_refuse_a_missing_folder_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    missing = tmp_path / "nowhere"
    assert main([*command, "--queue-dir", str(missing)]) == 2
    assert "no queue folder at" in capsys.readouterr().err
    assert not missing.exists()


# -- flush -------------------------------------------------------------------------------


def test_flush_sends_every_session_with_its_own_header(
    tmp_path: Path, collector: DevCollector, capsys: pytest.CaptureFixture[str]
) -> None:
    queue_dir = tmp_path / "q"
    first = fill(collector, queue_dir, 7)
    second = fill(collector, queue_dir, 4, product_version="0.9.0")
    # Only the folder, the URL and the secret: the events keep their own headers.
    assert main(["flush", *flush_args(collector.url, queue_dir)]) == 0
    assert capsys.readouterr().out == "sent 11, failed attempts 0, left 0\n"
    events = collector.wait_for(11)
    expected = [(first, nr) for nr in range(1, 8)] + [(second, nr) for nr in range(1, 5)]
    assert numbers(events) == sorted(expected)
    versions = {e["session"]: e["product_version"] for e in events}
    assert versions == {first: "1.0.0", second: "0.9.0"}
    assert queue_state(queue_dir)[0] == 0


def test_flush_to_a_dead_collector_exits_1_and_keeps_everything(
    tmp_path: Path, collector: DevCollector, capsys: pytest.CaptureFixture[str]
) -> None:
    queue_dir = tmp_path / "q"
    url = dead_url()
    fill(url, queue_dir, 3)
    assert main(["flush", *flush_args(url, queue_dir)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "sent 0, failed attempts 1, left 3\n"
    assert "connection refused" in captured.err
    assert "next try" not in captured.err  # a one-shot flush does not try again by itself
    assert queue_state(queue_dir)[0] == 3
    # Nothing stays leased: the collector, back at that URL, gets everything at once.
    with collector_at(url) as revived:
        assert main(["flush", *flush_args(url, queue_dir)]) == 0
        assert len(revived.wait_for(3)) == 3


def test_flush_needs_only_the_folder_the_url_and_the_secret(
    tmp_path: Path, collector: DevCollector
) -> None:
    queue_dir = tmp_path / "q"
    first = fill(collector, queue_dir, 3)
    second = fill(collector, queue_dir, 2, product_version="0.9.0")
    old_key = "the-old-key"  # events bound to another key
    fill(collector, queue_dir, 2, shared_secret_key=old_key)
    # The application's other variables may be set, even ones flush could not use: ignored.
    env = cli_env(
        tmp_path,
        HAMUSTRO_COLLECTOR_URL=collector.url,
        HAMUSTRO_SHARED_SECRET_KEY=TEST_SECRET,
        HAMUSTRO_QUEUE_DIR=str(queue_dir),
        HAMUSTRO_SCHEMA="2",  # without the env schema 2 needs
        HAMUSTRO_SYSTEM_LANGUAGE="not checked",
    )

    done = run_cli(tmp_path, "flush", env=env)
    assert done.stdout == "sent 5, failed attempts 0, left 2\n"
    assert done.returncode == 1  # the old key's events are left
    assert "bound to another collector or key (see `rebind`)" in done.stderr
    events = collector.wait_for(5)
    assert numbers(events) == sorted([(first, n) for n in (1, 2, 3)] + [(second, 1), (second, 2)])
    assert {e["session"]: e["product_version"] for e in events} == {first: "1.0.0", second: "0.9.0"}
    assert queue_state(queue_dir)[0] == 2


def test_flush_takes_no_collection_fields(tmp_path: Path) -> None:
    shown = run_cli(tmp_path, "flush", "--help").stdout
    for flag in ("--collector-url", "--shared-secret-key", "--queue-dir", "--client-id",
                 "--timeout", "--headers"):  # fmt: skip
        assert flag in shown
    for flag in ("--product-version", "--device-id", "--system-version", "--schema", "--env"):
        assert flag not in shown
    done = run_cli(tmp_path, "flush", "--product-version", "1.0.0")
    assert done.returncode == 2
    assert "unrecognized arguments: --product-version (and 1 value, not shown)" in done.stderr


def test_flush_without_the_secret_names_the_option_and_the_variable(
    tmp_path: Path,
    collector: DevCollector,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue_dir = tmp_path / "q"
    fill(collector, queue_dir, 2)
    for name, value in config_env(collector.url, queue_dir).items():
        if name != "HAMUSTRO_SHARED_SECRET_KEY":
            monkeypatch.setenv(name, value)
    assert main(["flush"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hamustro-logging: missing configuration:")
    assert "--shared-secret-key" in err and "HAMUSTRO_SHARED_SECRET_KEY" in err
    assert "HAMUSTRO_DEVICE_ID" not in err  # given: not reported missing
    assert queue_state(queue_dir)[0] == 2
    assert collector.answered() == {}


def test_flush_of_a_missing_folder_exits_2_and_creates_nothing(
    tmp_path: Path, collector: DevCollector, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere"
    assert main(["flush", *flush_args(collector.url, missing)]) == 2
    assert "no queue folder at" in capsys.readouterr().err
    assert not missing.exists()


@pytest.mark.parametrize("terminal", [True, False])
def test_flush_draws_a_progress_bar_only_on_a_terminal(
    tmp_path: Path,
    collector: DevCollector,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    terminal: bool,
) -> None:
    queue_dir = tmp_path / "q"
    config = tracker_config(collector, queue_dir, queue_size=10**6)
    with ClientTracker(**config) as tracker:
        stored = tracker.store([Event(int(time.time()), b"bulk")] * 1200)
    assert stored.stored == 1200
    stderr = _Terminal()
    if terminal:
        monkeypatch.setattr(sys, "stderr", stderr)

    assert main(["flush", *flush_args(collector.url, queue_dir)]) == 0
    assert capsys.readouterr().out == "sent 1200, failed attempts 0, left 0\n"
    assert len(collector.wait_for(1200)) == 1200
    if terminal:
        drawn = stderr.getvalue()
        assert drawn.startswith("\rsending [------------------------------] 0/1200 0%")
        assert drawn.endswith("\rsending [##############################] 1200/1200 100%\n")
    else:
        assert "\r" not in capsys.readouterr().err


# -- send-test ---------------------------------------------------------------------------


def test_send_test_delivers_one_testing_event_and_leaves_the_queue_alone(
    tmp_path: Path, collector: DevCollector
) -> None:
    queue_dir = tmp_path / "q"
    fill(collector, queue_dir, 2)
    before = queue_state(queue_dir)
    env = cli_env(tmp_path, **config_env(collector.url, queue_dir))

    done = run_cli(tmp_path, "send-test", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: the collector accepted the test event")
    events = collector.events()
    assert len(events) == 1
    event = events[0]
    assert (event["event"], event["is_testing"], event["nr"]) == (
        "hamustro_logging.send_test",
        True,
        1,
    )
    # A session of its own: its nr 1 never collides with the app's (SESSION, 1).
    assert event["product_version"] == "1.0.0+send-test"
    assert event["session"] == session_id(
        sha256hex("device-1"), "client-1", "OS X 10.11", "1.0.0+send-test"
    )
    assert event["session"] != SESSION and event["device_id"] == sha256hex("device-1")
    assert queue_state(queue_dir) == before == (2, 0, {SESSION: 2})


@pytest.mark.parametrize("how", ["environment", "option"])
def test_send_test_with_a_wrong_secret_says_so_without_printing_it(
    tmp_path: Path, collector: DevCollector, how: str
) -> None:
    wrong = "wrong-secret-7f3a9"
    queue_dir = tmp_path / "q"
    if how == "environment":
        done = run_cli(
            tmp_path,
            "send-test",
            env=cli_env(tmp_path, **config_env(collector.url, queue_dir, wrong)),
        )
    else:
        done = run_cli(tmp_path, "send-test", *config_args(collector.url, queue_dir, wrong))
    assert done.returncode == 1
    output = done.stdout + done.stderr
    assert "shared_secret_key" in output and "HAMUSTRO_SHARED_SECRET_KEY" in output
    assert wrong not in output
    assert collector.events() == []
    assert collector.answered() == {405: 1}
    assert not queue_dir.exists()  # send-test never opens the queue


def test_send_test_to_a_dead_collector_asks_whether_it_is_running(tmp_path: Path) -> None:
    url = dead_url()
    done = run_cli(tmp_path, "send-test", *config_args(url, tmp_path / "q"))
    assert done.returncode == 1
    assert done.stdout == ""
    assert f"is the collector running at {url}/api/v1/track?" in done.stderr
    assert done.stderr.startswith("hamustro-logging: ")


@pytest.mark.parametrize(
    ("status", "says"),
    [
        (400, "400: the collector refused the collection as malformed"),
        (429, "429: the collector is busy"),
        (503, "503: the collector is busy"),
        (404, "HTTP 404"),
    ],
)
def test_send_test_explains_the_other_answers(
    tmp_path: Path,
    collector: DevCollector,
    capsys: pytest.CaptureFixture[str],
    status: int,
    says: str,
) -> None:
    collector.fail_next(1, status)
    assert main(["send-test", *config_args(collector.url, tmp_path / "q")]) == 1
    assert says in capsys.readouterr().err
    # The empty collection that asks which schema the collector speaks got the
    # answer; after a 400 it is asked in the other schema too (400 again).
    assert collector.answered() == {status: 2 if status == 400 else 1}


def test_send_test_reports_a_timeout(
    tmp_path: Path, collector: DevCollector, capsys: pytest.CaptureFixture[str]
) -> None:
    collector.hang_next(1, seconds=5)
    args = [*config_args(collector.url, tmp_path / "q"), "--timeout", "0.3"]
    assert main(["send-test", *args]) == 1
    assert "no answer within 0.3 s" in capsys.readouterr().err


# -- export and retry-rejected -----------------------------------------------------------


def test_export_prints_each_pending_event_as_a_json_line(
    tmp_path: Path, collector: DevCollector
) -> None:
    queue_dir = tmp_path / "q"
    config = tracker_config(
        collector, queue_dir, queue_size=10**6, system="TestOS", product_git_hash="abc123"
    )
    before = int(time.time())
    with ClientTracker(**config) as tracker:
        tracker.track_event("signup", user_id=7, params={"plan": "pro"}, ip="203.0.113.7")
        tracker.track_event("checkout", params="raw text", is_testing=True, ip="2001:db8::1")
    after = int(time.time())
    header = {
        "session": SESSION,
        "device_id": sha256hex("device-1"),
        "client_id": "client-1",
        "system_version": "OS X 10.11",
        "product_version": "1.0.0",
        "system": "TestOS",
        "product_git_hash": "abc123",
    }
    expected = [
        header
        | {
            "nr": 1,
            "event": "signup",
            "user_id": 7,
            "ip": "203.0.113.7",
            "parameters": '{"plan":"pro"}',
            "is_testing": False,
        },
        header
        | {
            "nr": 2,
            "event": "checkout",
            "user_id": None,
            "ip": "2001:db8::1",
            "parameters": "raw text",
            "is_testing": True,
        },
    ]

    done = run_cli(tmp_path, "export", "--queue-dir", str(queue_dir))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    keys = {"session", "nr", "at", "event", "user_id", "ip", "parameters", "is_testing"}
    keys |= {"device_id", "client_id", "system_version", "product_version", "system"}
    keys |= {"product_git_hash"}
    assert [set(line) for line in lines] == [keys, keys]
    assert all(before <= line.pop("at") <= after for line in lines)
    assert lines == expected

    done = run_cli(tmp_path, "export", "--rejected", "--queue-dir", str(queue_dir))
    assert (done.returncode, done.stdout) == (0, "")


def test_export_rejected_then_retry_rejected_moves_them_back(
    tmp_path: Path, collector: DevCollector, capsys: pytest.CaptureFixture[str]
) -> None:
    queue_dir = tmp_path / "q"
    fill(collector, queue_dir, 4)
    assert reject_first(queue_dir, max_events=3) == (SESSION, 3)
    assert queue_state(queue_dir)[:2] == (1, 3)

    assert main(["export", "--rejected", "--queue-dir", str(queue_dir)]) == 0
    rejected = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["nr"], e["user_id"]) for e in rejected] == [(1, 0), (2, 1), (3, 2)]
    assert main(["export", "--queue-dir", str(queue_dir)]) == 0
    assert [json.loads(line)["nr"] for line in capsys.readouterr().out.splitlines()] == [4]

    assert main(["retry-rejected", "--queue-dir", str(queue_dir)]) == 0
    assert capsys.readouterr().out == "moved 3 rejected events back to pending\n"
    assert queue_state(queue_dir)[:2] == (4, 0)
    assert main(["retry-rejected", "--queue-dir", str(queue_dir)]) == 0
    assert capsys.readouterr().out == "moved 0 rejected events back to pending\n"

    assert main(["flush", *flush_args(collector.url, queue_dir)]) == 0
    assert numbers(collector.wait_for(4)) == [(SESSION, nr) for nr in range(1, 5)]


# -- collector ---------------------------------------------------------------------------


def test_collector_command_runs_the_development_collector(tmp_path: Path) -> None:
    secret = "cli-collector-secret"  # noqa: S105 -- a test value, not a credential
    command = [sys.executable, "-m", "hamustro_logging", "collector", "--port", "0"]
    process = subprocess.Popen(
        [*command, "--secret", secret],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=cli_env(tmp_path),
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        match = re.fullmatch(
            r"hamustro dev collector listening on (http://\S+)/api/v1/track\n", line
        )
        assert match, line
        done = run_cli(tmp_path, "send-test", *config_args(match[1], tmp_path / "q", secret))
        assert done.returncode == 0, done.stderr
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    printed = json.loads(stdout)
    assert (printed["event"], printed["is_testing"]) == ("hamustro_logging.send_test", True)


ROTATED_KEY = "old-key"


def test_rebind_takes_the_headers_that_are_part_of_the_destination(
    tmp_path: Path, collector: DevCollector
) -> None:
    """A destination with headers: `rebind --headers` (or $HAMUSTRO_HEADERS) names it."""
    queue_dir = tmp_path / "q"
    fill(collector, queue_dir, 3, shared_secret_key=ROTATED_KEY)  # logged before a rotation
    headers = {"X-Tenant": "acme"}
    env = cli_env(tmp_path, HAMUSTRO_SHARED_SECRET_KEY=TEST_SECRET)
    env["HAMUSTRO_HEADERS"] = json.dumps(headers)
    args = ("rebind", "--queue-dir", str(queue_dir), "--collector-url", collector.url)
    done = run_cli(tmp_path, *args, env=env)
    assert done.returncode == 0, done.stderr
    assert "3 events now bound to" in done.stdout
    config = tracker_config(collector, queue_dir, queue_size=10**6, headers=headers)
    with ClientTracker(**config) as tracker:
        assert tracker.flush(timeout=10) is True
    assert len(collector.wait_for(3)) == 3
    done = run_cli(tmp_path, *args, "--headers", "[1]", env=env)
    assert done.returncode == 2 and "headers must be a mapping" in done.stderr
