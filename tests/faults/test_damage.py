"""Issue 10 (and 9's numbering): damaged rows, tampered counters, a database damaged after opening.

The queue's files are damaged for real, with ``sqlite3`` on the closed folder
or by truncating and overwriting ``cache.db``; delivery goes to the real
development collector on loopback.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hamustro_logging import ClientTracker, HamustroHandler
from hamustro_logging.collector import DevCollector
from hamustro_logging.reader import QueueReader
from hamustro_logging.wire import iter_frames

from ..support import assert_ledger_adds_up, numbers, tracker_config

ROOT = Path(__file__).resolve().parents[2]
OTHER_VERSION = "2.0.0"  # a second group in the folder: the one damaged


def fill(collector: DevCollector, folder: Path, n: int, **overrides: Any) -> str:
    """Queue ``n`` events (user_id 0..n-1), one chunk each; return their session."""
    overrides.setdefault("max_batch_events", 1)
    with ClientTracker(**tracker_config(collector, folder, queue_size=10**6, **overrides)) as t:
        for i in range(n):
            t.track_event("e", user_id=i, params={"i": i})
        return t.session


def execute(folder: Path, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Run one statement on the folder's database, as someone with a shell would."""
    con = sqlite3.connect(folder / "cache.db")
    try:
        with con:
            return con.execute(statement, params).fetchall()
    finally:
        con.close()


def keys(folder: Path, prefix: str) -> list[str]:
    rows = execute(
        folder, "SELECT key FROM Cache WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)
    )
    return sorted(key for (key,) in rows)


def run_status(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAMUSTRO_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "hamustro_logging", "status", "--queue-dir", str(folder), *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


class Exploit:
    """A pickle that leaves a file behind if anything ever unpickles it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, ...]]:
        return (os.system, (f"touch {self.marker}",))


# -- one damaged row --------------------------------------------------------------------------


def delete_header(folder: Path, other: str, marker: Path) -> None:
    (key,) = keys(folder, f"h/{other}/")
    execute(folder, "DELETE FROM Cache WHERE key = ?", (key,))


def alter_header(folder: Path, other: str, marker: Path) -> None:
    (key,) = keys(folder, f"h/{other}/")
    ((value,),) = execute(folder, "SELECT value FROM Cache WHERE key = ?", (key,))
    altered = value.replace(b"OS X 10.11", b"OS X 10.12")
    assert altered != value
    execute(folder, "UPDATE Cache SET value = ? WHERE key = ?", (altered, key))


def malformed_key(folder: Path, other: str, marker: Path) -> None:
    execute(
        folder,
        "INSERT INTO Cache (key, raw, store_time, expire_time, access_time, access_count,"
        " tag, size, mode, filename, value) VALUES ('e/x', 1, 0, NULL, 0, 0, NULL, 0, 1, NULL, ?)",
        (b"\x42\x01\x00",),
    )


def pickled_chunk(folder: Path, other: str, marker: Path) -> None:
    key = keys(folder, f"e/{other}/")[2]
    execute(
        folder,
        "UPDATE Cache SET mode = 4, value = ? WHERE key = ?",
        (pickle.dumps(Exploit(marker)), key),
    )


def not_frames(folder: Path, other: str, marker: Path) -> None:
    key = keys(folder, f"e/{other}/")[2]
    execute(folder, "UPDATE Cache SET value = ? WHERE key = ?", (b"these are not frames", key))


def wrong_count(folder: Path, other: str, marker: Path) -> None:
    """A chunk key that says 3 events over a value holding one."""
    key = keys(folder, f"e/{other}/")[2]
    execute(folder, "UPDATE Cache SET key = ? WHERE key = ?", (key[: -len("/1")] + "/3", key))


#: damage -> which of the other session's 5 events stay deliverable.
DAMAGE: dict[str, tuple[Callable[[Path, str, Path], None], list[int]]] = {
    "header deleted": (delete_header, []),
    "header altered": (alter_header, []),
    "malformed key": (malformed_key, [0, 1, 2, 3, 4]),
    "pickled chunk": (pickled_chunk, [0, 1, 3, 4]),
    "not frames": (not_frames, [0, 1, 3, 4]),
    "wrong count": (wrong_count, [0, 1, 3, 4]),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_row_is_set_aside_and_every_other_event_goes_out(
    tmp_path: Path, collector: DevCollector, damage: str
) -> None:
    folder = tmp_path / "queue"
    ours = fill(collector, folder, 5)
    other = fill(collector, folder, 5, product_version=OTHER_VERSION)
    marker = tmp_path / "pwned"
    spoil, deliverable = DAMAGE[damage]
    spoil(folder, other, marker)

    with ClientTracker(**tracker_config(collector, folder, queue_size=10**6)) as t:
        for i in range(5, 8):
            t.track_event("e", user_id=i)  # storing still works
        assert t.flush(timeout=20) is True  # nothing deliverable is left behind
        stats = t.stats()
        assert stats["pending"] == 0
        aside = keys(folder, "x/")
        assert aside and stats["aside_in_queue"] == len(aside)
    received = collector.wait_for(8 + len(deliverable))
    by_session: dict[str, list[int]] = {}
    for event in received:
        by_session.setdefault(event["session"], []).append(event["user_id"])
    assert sorted(by_session[ours]) == list(range(8))
    assert sorted(by_session.get(other, [])) == deliverable
    assert len(set(numbers(received))) == len(received)  # each once
    assert not marker.exists()  # the pickle never ran

    # A later start finds the folder sound: nothing to repair, nothing lost.
    with ClientTracker(**tracker_config(collector, folder, queue_size=10**6)) as t:
        assert t.stats()["aside_in_queue"] == len(aside)
        assert t.flush(timeout=10) is True
    ledger = assert_ledger_adds_up(folder, 13)
    assert ledger.set_aside == 5 - len(deliverable)  # the events of the rows set aside


def test_status_shows_the_rows_set_aside(tmp_path: Path, collector: DevCollector) -> None:
    folder = tmp_path / "queue"
    fill(collector, folder, 3)
    malformed_key(folder, "", tmp_path / "unused")
    with ClientTracker(**tracker_config(collector, folder, queue_size=10**6)) as t:
        assert t.flush(timeout=10) is True
        assert t.stats()["aside_in_queue"] == 1
    done = run_status(folder, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert (doc["aside_in_queue"], doc["set_aside"]) == (1, 0), doc  # a row, not an event of ours
    done = run_status(folder)
    assert done.returncode == 0, done.stderr
    assert any("aside" in line and "1" in line for line in done.stdout.splitlines())


def test_status_reads_a_folder_with_a_pickled_row_without_running_it(
    tmp_path: Path, collector: DevCollector
) -> None:
    """Before any tracker repaired it: the read-only reader must cope, and never unpickle."""
    folder = tmp_path / "queue"
    fill(collector, folder, 2)
    other = fill(collector, folder, 5, product_version=OTHER_VERSION)
    marker = tmp_path / "pwned"
    pickled_chunk(folder, other, marker)
    done = run_status(folder, "--json")
    assert not marker.exists()
    assert done.returncode in (0, 1), done.stderr  # a clear failure at worst, never a traceback
    assert "Traceback" not in done.stderr


# -- a tampered counter ----------------------------------------------------------------------


@pytest.mark.parametrize("tamper", ["str", "pickle"])
def test_a_tampered_counter_is_rebuilt_and_new_events_are_stored(
    tmp_path: Path, collector: DevCollector, tamper: str
) -> None:
    folder = tmp_path / "queue"
    fill(collector, folder, 5)
    marker = tmp_path / "pwned"
    if tamper == "str":
        execute(folder, "UPDATE Cache SET value = 'many' WHERE key = 's/pending'")
    else:
        execute(
            folder,
            "UPDATE Cache SET mode = 4, value = ? WHERE key = 's/pending'",
            (pickle.dumps(Exploit(marker)),),
        )
    with ClientTracker(**tracker_config(collector, folder, queue_size=10**6)) as t:
        for i in range(5, 8):
            assert t.track_event("e", user_id=i) == i + 1  # stored, numbered on
        assert t.stats()["pending"] == 8  # the counter is right again
        assert t.flush(timeout=10) is True
        assert t.stats()["pending"] == 0
    assert sorted(e["user_id"] for e in collector.wait_for(8)) == list(range(8))
    assert execute(folder, "SELECT mode, value FROM Cache WHERE key = 's/pending'") == [(1, 0)]
    assert not marker.exists()
    assert assert_ledger_adds_up(folder, 8).sent == 8


# -- damage SQLite notices only after opening ------------------------------------------------


def checkpoint(folder: Path) -> None:
    """Everything into cache.db, the write-ahead log emptied (no connection left open)."""
    execute(folder, "PRAGMA wal_checkpoint(TRUNCATE)")
    assert not (folder / "cache.db-wal").exists() or (folder / "cache.db-wal").stat().st_size == 0


def truncate_to_half(db: Path) -> None:
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.truncate(size // 2)


def pages(db: Path) -> list[tuple[str, int, str]]:
    """(table or index, page number, page type) of every page, from SQLite's dbstat."""
    con = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
    try:
        rows = con.execute("SELECT name, pageno, pagetype FROM dbstat ORDER BY pageno").fetchall()
    finally:
        con.close()
    return [(str(name), int(page), str(kind)) for name, page, kind in rows]


def overwrite(db: Path, page: int) -> None:
    """Garbage over one page (numbered from 1), as a bad sector or a stray write leaves it."""
    page_size = 4096
    assert db.stat().st_size >= page * page_size
    with open(db, "r+b") as f:
        f.seek((page - 1) * page_size)
        f.write(os.urandom(page_size))


def overwrite_the_key_index(db: Path) -> None:
    (page,) = [p for name, p, _ in pages(db) if name == "Cache_key_raw"]
    overwrite(db, page)


def overwrite_the_last_table_leaf(db: Path) -> None:
    """The rows written last; the rows before them stay readable."""
    leaves = [p for name, p, kind in pages(db) if name == "Cache" and kind == "leaf"]
    assert len(leaves) >= 2
    overwrite(db, leaves[-1])


def overwrite_a_middle_overflow_page(db: Path) -> None:
    """Part of a value: SQLite returns garbage bytes without noticing anything."""
    overflow = [p for name, p, kind in pages(db) if name == "Cache" and kind == "overflow"]
    overwrite(db, overflow[len(overflow) // 2])


#: damage -> whether SQLite itself reports it (the database is then set aside).
SPOIL: dict[str, tuple[Callable[[Path], None], bool]] = {
    "truncated to half": (truncate_to_half, True),
    "key index overwritten": (overwrite_the_key_index, True),
    "last table leaf overwritten": (overwrite_the_last_table_leaf, True),
    "an overflow page overwritten": (overwrite_a_middle_overflow_page, False),
}


def readable(path: Path, session: str) -> tuple[set[int], int]:
    """What a row-by-row read of a damaged database finds of ``session``.

    The nr of every event in a chunk whose bytes are whole payload frames,
    and the session's number counter (0 if unreadable).
    """
    found: set[int] = set()
    counter = 0
    con = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        for rowid in range(1, 5000):
            try:
                rows = con.execute(
                    "SELECT key, value FROM Cache WHERE rowid = ?", (rowid,)
                ).fetchall()
            except sqlite3.DatabaseError:
                continue
            for key, value in rows:
                parts = str(key).split("/")
                if key == f"n/{session}" and isinstance(value, int):
                    counter = value
                if len(parts) == 5 and parts[:2] == ["e", session] and isinstance(value, bytes):
                    first, n = int(parts[3]), int(parts[4])
                    try:
                        whole = sum(1 for _ in iter_frames(value)) == n
                    except (ValueError, IndexError):
                        whole = False
                    if whole:
                        found.update(range(first, first + n))
    finally:
        con.close()
    return found, counter


SPOILS = list(SPOIL)


def check_delivery(
    received: list[dict[str, Any]], session: str, logged: dict[int, int], sent: int
) -> set[int]:
    """Each (session, nr) once, old ones carrying the event logged with them; the old nrs."""
    pairs = numbers(received)
    assert len(set(pairs)) == len(pairs), "a (session, nr) pair arrived twice"
    assert len(received) == sent, "the collector got events the stats do not count"
    for event in received:
        assert event["session"] == session
        if event["user_id"] < 100:
            assert logged[event["nr"]] == event["user_id"]
    return {e["nr"] for e in received if e["user_id"] < 100}


def log_100(tracker: ClientTracker) -> dict[int, int]:
    """Log 100 events of ~300 bytes (user_id 0..99) over several pages; nr -> user_id."""
    logged = {tracker.track_event("e", user_id=i, params={"pad": "p" * 300}): i for i in range(100)}
    assert sorted(logged) == list(range(1, 101))
    return logged


def check_ledger(folder: Path, sent: int, damaged_at: float, err: str) -> None:
    """The ledger adds up: what could not be read counts as set aside (in the file kept).

    Unless the ledger's own rows were in the damage: then counting started
    again at the salvage (said on stderr), and only the 20 events logged
    after it are in its books.
    """
    with QueueReader(folder) as reader:
        since = reader.ledger().since
    assert since is not None
    if since >= damaged_at:
        assert "counting starts again" in err
        assert assert_ledger_adds_up(folder, 20).sent == 20
    else:
        ledger = assert_ledger_adds_up(folder, 120)
        assert ledger.sent == sent and ledger.set_aside == 120 - sent


@pytest.mark.parametrize("spoil", SPOILS)
def test_a_database_damaged_under_a_running_tracker_is_set_aside_and_numbering_goes_on(
    tmp_path: Path,
    collector: DevCollector,
    capfd: pytest.CaptureFixture[str],
    spoil: str,
) -> None:
    folder = tmp_path / "queue"
    damage, noticed = SPOIL[spoil]
    with ClientTracker(**tracker_config(collector, folder, queue_size=10**6)) as t:
        logged = log_100(t)
        t.queue.close()  # this thread's connection: the only one
        checkpoint(folder)
        damaged_at = time.time()
        damage(folder / "cache.db")
        found, _ = readable(folder / "cache.db", t.session)
        new_nrs = [t.track_event("e", user_id=i) for i in range(100, 120)]
        assert t.flush(timeout=30) is True
        assert t.flush(timeout=30) is True  # and a second pass finds nothing more
        stats = t.stats()
        session = t.session
    assert stats["pending"] == 0
    assert min(new_nrs) > 100  # never a number handed out before
    received = collector.wait_for(20)
    old = check_delivery(received, session, logged, stats["sent"])
    assert old >= found, f"readable but not delivered: {sorted(found - old)}"
    assert sorted(e["nr"] for e in received if e["user_id"] >= 100) == new_nrs
    err = capfd.readouterr().err
    if noticed:
        assert [p for p in folder.glob("cache.db.corrupt-*") if p.name[-4:] not in ("-wal", "-shm")]
        assert err.count("is corrupt") == 1, err
    else:  # SQLite saw nothing wrong: the chunk whose bytes are garbage is set aside
        assert stats["aside_in_queue"] >= 1
        assert len(old) + stats["aside_in_queue"] * 12 >= 100
    check_ledger(folder, stats["sent"], damaged_at, err)


@pytest.mark.parametrize("spoil", SPOILS)
def test_a_damaged_database_opened_by_a_new_handler_is_salvaged(
    tmp_path: Path,
    collector: DevCollector,
    capfd: pytest.CaptureFixture[str],
    spoil: str,
) -> None:
    """A new process knows only what it can read: every readable number stays used."""
    folder = tmp_path / "queue"
    damage, noticed = SPOIL[spoil]
    with ClientTracker(**tracker_config(collector, folder, queue_size=10**6)) as t:
        logged = log_100(t)
        session = t.session
    checkpoint(folder)
    damaged_at = time.time()
    damage(folder / "cache.db")
    found, counter = readable(folder / "cache.db", session)

    handler = HamustroHandler(**tracker_config(collector, folder, queue_size=10**6, durable=True))
    log = logging.getLogger("tests.damage.reopen")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.handlers[:] = [handler]
    try:
        for i in range(100, 120):
            log.info("e", extra={"event": "e", "user_id": i})
        assert handler.flush(timeout=30) is True
        stats = handler.stats()
    finally:
        log.handlers.clear()
        handler.close()
    received = collector.wait_for(20)
    new_nrs = sorted(e["nr"] for e in received if e["user_id"] >= 100)
    assert len(new_nrs) == 20
    old = check_delivery(received, session, logged, stats["sent"])
    assert old >= found, f"readable but not delivered: {sorted(found - old)}"
    # No new event took a number that could be read (a readable event's, or the counter).
    assert min(new_nrs) > max(found | {counter})
    err = capfd.readouterr().err
    if noticed:
        assert list(folder.glob("cache.db.corrupt-*"))
        assert err.count("is corrupt") == 1
    check_ledger(folder, stats["sent"], damaged_at, err)
