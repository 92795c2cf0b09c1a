"""``status --check`` and ``status --prometheus`` on real folders.

Each folder is made by a real handler sending to the development collector
on loopback (or to a port nothing listens on, for the critical cases); the
command runs as a subprocess of ``python -m hamustro_logging``, as a probe
or a cron job would run it. The Prometheus text is read by a strict parser
of the exposition format (below), and its numbers are compared with the
folder's ledger as the read-only reader sees it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hamustro_logging import ClientTracker, HamustroHandler
from hamustro_logging.collector import DevCollector
from hamustro_logging.journal import START
from hamustro_logging.ledger import Ledger
from hamustro_logging.queue import Queue
from hamustro_logging.reader import QueueReader

from .support import dead_url, tracker_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("HAMUSTRO_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def status(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m hamustro_logging status --queue-dir FOLDER ARGS``, no HAMUSTRO_* from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAMUSTRO_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "hamustro_logging", "status", "--queue-dir", str(folder), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def check(folder: Path, *args: str) -> tuple[int, str]:
    """``status --check ARGS``: its exit code and its one line (nothing on stderr)."""
    done = status(folder, "--check", *args)
    lines = done.stdout.splitlines()
    assert len(lines) == 1, (done.stdout, done.stderr)
    assert done.stderr == ""
    return done.returncode, lines[0]


@pytest.fixture
def log() -> Iterator[logging.Logger]:
    logger = logging.getLogger("test_health.shop")
    logger.propagate = False
    yield logger
    logger.handlers.clear()


def deliver(collector: DevCollector, folder: Path, log: logging.Logger, n: int) -> None:
    """``n`` events and one invalid record through a real handler, all delivered."""
    handler = HamustroHandler(**tracker_config(collector, folder))
    log.addHandler(handler)
    try:
        for i in range(n):
            log.warning("order", extra={"event": "order_placed", "user_id": i})
        log.warning("bad", extra={"event": "order_placed", "user_id": "not a number"})
        assert handler.flush(timeout=20) is False  # the dropped record: flush says so
        assert handler.stats()["pending"] == 0
    finally:
        log.removeHandler(handler)
        handler.close()
    collector.wait_for(n)


def keep(folder: Path, log: logging.Logger, n: int, old: int = 0, age: float = 7200) -> None:
    """``n`` events (``old`` of them logged ``age`` seconds ago) for a collector that is down."""
    handler = HamustroHandler(**tracker_config(dead_url(), folder))
    log.addHandler(handler)
    try:
        for i in range(old):
            record = log.makeRecord(
                log.name, logging.WARNING, __file__, 0, "old", (), None,
                extra={"event": "order_placed", "user_id": i},
            )  # fmt: skip
            record.created = time.time() - age
            log.handle(record)
        for i in range(old, n):
            log.warning("order", extra={"event": "order_placed", "user_id": i})
        assert handler.flush(timeout=5) is False
    finally:
        log.removeHandler(handler)
        handler.close()


# -- a strict reader of the Prometheus text format (0.0.4) -----------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"'
_SAMPLE = re.compile(rf"({_NAME})(?:\{{((?:{_LABEL},)*(?:{_LABEL})?)\}})? (\S+)")


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse_prometheus(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample: (name, labels) -> value; AssertionError at the first line out of format.

    Each family has one HELP and one TYPE line, before its samples, which
    follow each other; a counter's name ends in ``_total``; no series is
    given twice; the text ends with a newline; no timestamps.
    """
    assert text.endswith("\n")
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    helped: set[str] = set()
    typed: dict[str, str] = {}
    done: set[str] = set()
    current: str | None = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert re.fullmatch(_NAME, name) and help_text, line
            assert name not in helped and name not in done, f"HELP given twice: {line}"
            helped.add(name)
            continue
        if line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name in helped and name not in typed, f"TYPE without HELP first: {line}"
            assert kind in ("counter", "gauge"), line
            assert kind != "counter" or name.endswith("_total"), f"a counter's name: {line}"
            typed[name] = kind
            if current is not None:
                done.add(current)
            current = name
            continue
        assert not line.startswith("#") and line, f"a stray line: {line!r}"
        match = _SAMPLE.fullmatch(line)
        assert match, f"not a sample line: {line!r}"
        name, value = match.group(1), match.group(match.lastindex or 0)
        assert name == current, f"a sample outside its family: {line}"
        labels = frozenset((k, _unescape(v)) for k, v in re.findall(_LABEL, match.group(2) or ""))
        key = (name, labels)
        assert key not in samples, f"a series given twice: {line}"
        number = float(value)  # ValueError for anything but a float (or +Inf, NaN)
        assert not math.isnan(number), line
        samples[key] = number
    return samples


def metrics(folder: Path) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``status --prometheus`` read strictly: name -> labels other than queue_dir -> value."""
    done = status(folder, "--prometheus")
    assert done.returncode == 0, done.stderr
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for (name, labels), value in parse_prometheus(done.stdout).items():
        assert name.startswith("hamustro_"), name
        assert dict(labels)["queue_dir"] == str(folder)  # on every sample
        rest = tuple(sorted((k, v) for k, v in labels if k != "queue_dir"))
        out.setdefault(name, {})[rest] = value
    return out


def ledger_of(folder: Path) -> tuple[Ledger, int]:
    with QueueReader(folder) as reader:
        return reader.ledger(), reader.pending_count()


def assert_counters_equal_the_ledger(
    figures: dict[str, dict[tuple[tuple[str, str], ...], float]], folder: Path
) -> None:
    ledger, pending = ledger_of(folder)
    plain = {
        "stored": ledger.stored, "sent": ledger.sent, "resent": ledger.resent,
        "retried": ledger.retried, "set_aside": ledger.set_aside,
    }  # fmt: skip
    for name, value in plain.items():
        assert figures[f"hamustro_events_{name}_total"] == {(): value}, name
    for kind, counts in (("rejected", ledger.rejected), ("dropped", ledger.dropped)):
        by_reason = {
            dict(k)["reason"]: v for k, v in figures[f"hamustro_events_{kind}_total"].items()
        }
        assert {r: v for r, v in by_reason.items() if v} == counts, kind
    assert figures["hamustro_events_pending"] == {(): pending}
    assert figures["hamustro_events_unaccounted"] == {(): ledger.unaccounted(pending)}
    assert ledger.since is not None
    assert figures["hamustro_ledger_since_timestamp_seconds"] == {(): ledger.since}


def test_the_parser_refuses_what_the_format_does_not_allow() -> None:
    good = '# HELP a_total A.\n# TYPE a_total counter\na_total{x="1"} 2\n'
    assert parse_prometheus(good) == {("a_total", frozenset({("x", "1")})): 2.0}
    bad = [
        good.replace("a_total counter", "a counter"),  # a counter not ending in _total
        good.replace('{x="1"}', "{x=1}"),  # an unquoted label value
        good + 'a_total{x="1"} 3\n',  # a series twice
        good.rstrip("\n"),  # no newline at the end
        "# TYPE a gauge\na 1\n",  # no HELP
        good + "b 1\n",  # a sample outside its family
        good.replace(" 2\n", " two\n"),  # not a number
    ]
    for text in bad:
        with pytest.raises((AssertionError, ValueError)):
            parse_prometheus(text)


# -- healthy ----------------------------------------------------------------------------------


def test_a_folder_that_delivers_is_healthy_and_its_counters_are_the_ledger(
    tmp_path: Path, collector: DevCollector, log: logging.Logger
) -> None:
    folder = tmp_path / "queue"
    deliver(collector, folder, log, 5)
    code, line = check(folder)
    assert code == 0
    assert line.startswith("OK: 0 pending, last delivery ") and line.endswith(" ago")

    figures = metrics(folder)
    assert_counters_equal_the_ledger(figures, folder)
    assert figures["hamustro_events_sent_total"] == {(): 5}
    dropped = figures["hamustro_events_dropped_total"]
    assert dropped[(("reason", "invalid"),)] == 1
    assert dropped[(("reason", "queue_full"),)] == 0  # known reasons are there at 0
    assert figures["hamustro_oldest_pending_age_seconds"] == {(): 0}
    with QueueReader(folder) as reader:
        assert figures["hamustro_last_success_timestamp_seconds"] == {(): reader.last_sync()}
    assert "hamustro_last_set_aside_timestamp_seconds" not in figures  # never: no sample
    assert set(figures["hamustro_events_rejected_total"]) == {
        (("reason", "400"),),
        (("reason", "413"),),
    }


@pytest.mark.parametrize("how", ["--check", "--prometheus"])
def test_check_and_prometheus_change_nothing_in_the_folder(
    tmp_path: Path, collector: DevCollector, log: logging.Logger, how: str
) -> None:
    folder = tmp_path / "queue"
    deliver(collector, folder, log, 2)
    before = snapshot(folder)
    done = status(folder, how)
    assert done.returncode == 0, done.stderr
    after = snapshot(folder)
    # No file added, none changed but cache.db-shm when a WAL is there: the
    # shared-memory index every reader of a WAL database updates (reader.py).
    assert set(after) == set(before)
    assert {k: v for k, v in after.items() if k != "cache.db-shm"} == {
        k: v for k, v in before.items() if k != "cache.db-shm"
    }


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every entry under ``folder``: (mode, sha256 of the bytes)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        data = path.read_bytes() if path.is_file() else b""
        out[str(path.relative_to(folder))] = (
            path.lstat().st_mode,
            hashlib.sha256(data).hexdigest(),
        )
    return out


# -- the collector is down ---------------------------------------------------------------------


def test_a_collector_down_for_long_is_critical_by_the_oldest_event(
    tmp_path: Path, log: logging.Logger
) -> None:
    folder = tmp_path / "queue"
    keep(folder, log, 6, old=1, age=7200)  # one event has waited two hours

    code, line = check(folder)
    assert code == 2
    assert line.startswith("CRITICAL: the oldest pending event is 2h")
    assert "over --max-age 3600 s" in line and "(6 pending, oldest 2h" in line
    assert "nothing delivered yet" in line

    code, line = check(folder, "--max-age", "10000")  # 2 h is over half of it
    assert code == 1
    assert line.startswith("WARNING: the oldest pending event is 2h")
    assert "over half of --max-age 10000 s" in line

    figures = metrics(folder)
    assert_counters_equal_the_ledger(figures, folder)
    assert figures["hamustro_events_pending"] == {(): 6}
    assert figures["hamustro_events_sent_total"] == {(): 0}
    assert figures["hamustro_oldest_pending_age_seconds"][()] >= 7200


def test_too_many_pending_is_critical_and_half_of_it_a_warning(
    tmp_path: Path, log: logging.Logger
) -> None:
    folder = tmp_path / "queue"
    keep(folder, log, 6)
    limits = ("--max-age", "100000")
    code, line = check(folder, *limits, "--max-pending", "5")
    assert (code, line.split(" (")[0]) == (2, "CRITICAL: 6 events pending, over --max-pending 5")
    code, line = check(folder, *limits, "--max-pending", "11")
    assert (code, line.split("; ")[0]) == (
        1,
        "WARNING: 6 events pending, over half of --max-pending 11",
    )
    # Under every limit, what is left: events wait and none ever went out.
    code, line = check(folder, *limits, "--max-pending", "12")
    assert code == 1
    assert line.startswith("WARNING: events are pending and none was ever delivered")


def test_events_left_in_the_journal_of_a_killed_app_count_as_pending(tmp_path: Path) -> None:
    folder = tmp_path / "queue"
    # sender="agent" and no agent: nothing moves the journal; then SIGKILL.
    script = (
        "import logging, os, signal\n"
        "from hamustro_logging import HamustroHandler\n"
        f"h = HamustroHandler(collector_url={dead_url()!r}, shared_secret_key='s', "
        f"client_id='c', product_version='1', queue_dir={str(folder)!r}, sender='agent')\n"
        "log = logging.getLogger('app'); log.addHandler(h)\n"
        "for i in range(7): log.warning('x', extra={'event': 'order_placed', 'user_id': i})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAMUSTRO_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", script], env=env, timeout=60, check=False)
    assert done.returncode == -9
    # No store yet (no process ever moved anything): said, and critical.
    code, line = check(folder)
    assert code == 2
    assert "its journal holds 7 events nothing has moved" in line
    Queue(folder).close()  # (a store, as any mover makes; it moves nothing by itself)
    doc = json.loads(status(folder, "--json").stdout)
    assert (doc["pending"], doc["in_journals"]) == (0, 7)
    code, line = check(folder, "--max-age", "100000", "--max-pending", "5")
    assert (code, line.split(" (")[0]) == (2, "CRITICAL: 7 events pending, over --max-pending 5")
    assert metrics(folder)["hamustro_events_in_journals"] == {(): 7}
    # Read, not adopted: the journal still holds them for a mover.
    assert json.loads(status(folder, "--json").stdout)["in_journals"] == 7


# -- what the collector refused, what was set aside -------------------------------------------


def test_an_event_refused_recently_is_a_warning(
    tmp_path: Path, collector: DevCollector, log: logging.Logger
) -> None:
    folder = tmp_path / "queue"
    deliver(collector, folder, log, 2)
    collector.fail_next(1, status=400)
    with ClientTracker(**tracker_config(collector, folder, queue_size=10**6)) as tracker:
        tracker.track_event("order_placed", user_id=9)
        assert tracker.flush(timeout=10) is True  # refused: nothing left to send
    code, line = check(folder)
    assert code == 1
    assert line.startswith("WARNING: the collector refused events ")
    assert "(1 in the rejected area: export --rejected)" in line
    code, _ = check(folder, "--recent", "0")  # refused before the window: not counted
    assert code == 0

    figures = metrics(folder)
    assert_counters_equal_the_ledger(figures, folder)
    assert figures["hamustro_events_rejected_total"][(("reason", "400"),)] == 1
    assert figures["hamustro_events_rejected_in_queue"] == {(): 1}
    assert figures["hamustro_last_rejected_timestamp_seconds"][()] > 0


def test_a_row_set_aside_recently_is_critical(
    tmp_path: Path, collector: DevCollector, log: logging.Logger
) -> None:
    folder = tmp_path / "queue"
    deliver(collector, folder, log, 1)
    with ClientTracker(**tracker_config(collector, folder, queue_size=10**6)) as tracker:
        for i in range(3):  # kept: not due yet
            tracker.track_event("order_placed", user_id=i)
    # A chunk whose bytes are not events: the next sender sets it aside.
    con = sqlite3.connect(folder / "cache.db")
    with con:
        (key,) = con.execute("SELECT key FROM Cache WHERE key LIKE 'e/%' LIMIT 1").fetchone()
        con.execute("UPDATE Cache SET value = ? WHERE key = ?", (b"these are not frames", key))
    con.close()
    with ClientTracker(**tracker_config(collector, folder, queue_size=10**6)) as tracker:
        assert tracker.flush(timeout=10) is True
        assert tracker.stats()["aside_in_queue"] == 1
    code, line = check(folder)
    assert code == 2
    assert line.startswith("CRITICAL: damaged data set aside ")
    assert "1 unusable row (export --aside)" in line

    figures = metrics(folder)
    assert_counters_equal_the_ledger(figures, folder)
    assert figures["hamustro_rows_set_aside"] == {(): 1}
    assert figures["hamustro_events_set_aside_total"][()] >= 1


def test_a_damaged_journal_segment_is_critical_and_named(
    tmp_path: Path, collector: DevCollector, log: logging.Logger
) -> None:
    folder = tmp_path / "queue"
    # An app with sender="agent" wrote five events; a record in the middle of
    # its segment was damaged on the disk before anyone moved it in.
    config = tracker_config(collector, folder, sender="agent")
    handler = HamustroHandler(**config)
    log.addHandler(handler)
    for i in range(5):
        log.warning("order", extra={"event": "order_placed", "user_id": i})
    log.removeHandler(handler)
    handler.close()
    (segment,) = (folder / "journal").glob("*.jnl")
    data = bytearray(segment.read_bytes())
    data[START + 200] ^= 0xFF
    segment.write_bytes(bytes(data))
    with ClientTracker(**tracker_config(collector, folder)) as tracker:
        tracker.flush(timeout=10)  # adopts the segment: sets it aside
    damaged = f"journal/{segment.name}.damaged"
    assert (folder / damaged).exists()

    code, line = check(folder)
    assert code == 2
    assert line.startswith("CRITICAL: damaged data set aside ") and damaged in line
    figures = metrics(folder)
    assert figures["hamustro_files_set_aside"] == {(): 1}
    assert figures["hamustro_last_set_aside_timestamp_seconds"][()] > 0


# -- folders that cannot be read, and usage ----------------------------------------------------


def test_a_missing_folder_is_critical_and_nothing_is_created(tmp_path: Path) -> None:
    code, line = check(tmp_path / "nowhere")
    assert (code, line) == (2, f"CRITICAL: no queue folder at {tmp_path / 'nowhere'} "
                               "(nothing was created)")  # fmt: skip
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--max-age", "10"], "--max-age: only with --check"),
        (["--check", "--max-pending", "-1"], "--max-pending must be >= 0"),
        (["--check", "--json"], "not allowed with argument"),
        (["--prometheus", "--max-age", "5"], "--max-age: only with --check"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    done = status(tmp_path, *args)
    assert done.returncode == 2
    assert says in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""


def test_a_label_value_is_escaped(tmp_path: Path, collector: DevCollector) -> None:
    folder = tmp_path / 'odd "name" \\ here'
    with ClientTracker(**tracker_config(collector, folder)) as tracker:
        tracker.track_event("e")
        assert tracker.flush(timeout=10) is True
    figures = metrics(folder)  # checks queue_dir == the folder, unescaped
    assert figures["hamustro_events_sent_total"] == {(): 1}
