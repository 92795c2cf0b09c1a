"""Issue 21: a corrupt queue file never holds up the start; its salvage is bounded and resumable.

8 MiB of garbage in ``cache.db`` (random bytes, or a real queue whose later
pages are overwritten): the constructor of ``ClientTracker`` and of
``HamustroHandler`` returns within one salvage slice (``SALVAGE_SECONDS``)
and a generous margin derived from it, the readable rows go out once, and a
salvage cut short by its budget goes on at later opens and claims, carrying
each row once.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from hamustro_logging import ClientTracker, HamustroHandler
from hamustro_logging.collector import DevCollector
from hamustro_logging.queue import Queue
from hamustro_logging.salvage import SALVAGE_SECONDS

from ..support import tracker_config
from .test_damage import checkpoint, pages, readable

GARBAGE = 8 << 20
#: The constructor's bound: one salvage slice and the rest of its work, with a
#: margin for a loaded machine (twenty slices).
BOUND = 20 * SALVAGE_SECONDS


def fill(collector: DevCollector, folder: Path, n: int) -> tuple[str, dict[int, int]]:
    """Queue ``n`` events of ~300 bytes, one chunk (one row) each; (session, nr -> user_id)."""
    config = tracker_config(collector, folder, queue_size=10**6, max_batch_events=1)
    with ClientTracker(**config) as t:
        logged = {t.track_event("e", user_id=i, params={"pad": "p" * 300}): i for i in range(n)}
        return t.session, logged


def random_garbage(collector: DevCollector, folder: Path) -> tuple[str, dict[int, int]]:
    """8 MiB of random bytes where the database should be: nothing to carry."""
    folder.mkdir(mode=0o700)
    (folder / "cache.db").write_bytes(os.urandom(GARBAGE))
    return "", {}


def garbage_over_the_second_half(
    collector: DevCollector, folder: Path
) -> tuple[str, dict[int, int]]:
    """A real queue whose pages from the middle on are garbage, the file grown to 8 MiB.

    The first half of the table stays readable; the rightmost path of every
    B-tree is gone (the old salvage then walked some two million rowids).
    """
    session, logged = fill(collector, folder, 300)
    checkpoint(folder)
    db = folder / "cache.db"
    middle = max(page for _, page, _ in pages(db)) // 2
    with open(db, "r+b") as f:
        f.seek(middle * 4096)
        f.write(os.urandom(GARBAGE - middle * 4096))
    return session, logged


def leaves_in_rowid_order(db: Path) -> list[int]:
    """The table's leaf pages, in the order of the rowids they hold."""
    con = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
    try:
        rows = con.execute(
            "SELECT pageno FROM dbstat WHERE name = 'Cache' AND pagetype = 'leaf' ORDER BY path"
        ).fetchall()
    finally:
        con.close()
    return [int(page) for (page,) in rows]


def damage_in_patches(collector: DevCollector, folder: Path) -> tuple[str, dict[int, int]]:
    """Readable leaves between damaged runs of them, placed where a gallop alone jumps over.

    Six damaged leaves (some 70 rowids), four readable ones, then twelve
    damaged: a search past the damage by rowid + 1, 2, 4, ... 64, 128 lands
    in damage each time and never sees the four readable leaves in between;
    one rowid at a time finds them. And diskcache's settings page, so the
    open finds the damage. The file is grown to 8 MiB of garbage.
    """
    session, logged = fill(collector, folder, 600)
    checkpoint(folder)
    db = folder / "cache.db"
    leaves = leaves_in_rowid_order(db)
    (settings,) = [page for name, page, _ in pages(db) if name == "Settings"]
    with open(db, "r+b") as f:
        for page in [*leaves[10:16], *leaves[20:32], settings]:
            f.seek((page - 1) * 4096)
            f.write(os.urandom(4096))
        f.seek(0, os.SEEK_END)
        f.write(os.urandom(GARBAGE - f.tell()))
    return session, logged


CONTENT = {
    "random garbage": random_garbage,
    "a queue, garbage from its middle": garbage_over_the_second_half,
    "a queue, damage in patches": damage_in_patches,
}


def make_tracker(config: dict[str, Any]) -> ClientTracker:
    return ClientTracker(**config)


def make_handler(config: dict[str, Any]) -> HamustroHandler:
    return HamustroHandler(**config)


@pytest.mark.parametrize("content", list(CONTENT))
@pytest.mark.parametrize(
    "make", [make_tracker, make_handler], ids=["ClientTracker", "HamustroHandler"]
)
def test_a_corrupt_file_of_8_mib_costs_the_constructor_one_bounded_slice(
    tmp_path: Path,
    collector: DevCollector,
    capfd: pytest.CaptureFixture[str],
    content: str,
    make: Any,
) -> None:
    folder = tmp_path / "queue"
    session, logged = CONTENT[content](collector, folder)
    found, _ = readable(folder / "cache.db", session) if logged else (set(), 0)
    assert len(found) >= 50 or not logged, "the damage left too little to prove a carry"

    started = time.monotonic()
    made = make(tracker_config(collector, folder, queue_size=10**6))
    took = time.monotonic() - started
    try:
        assert took < BOUND, f"the constructor took {took:.1f} s (bound {BOUND:g} s)"
        assert made.flush(timeout=30) is True
        sent = made.stats()["sent"]
    finally:
        made.close()
    received = collector.events()
    assert len(received) == sent == len(found)  # each readable event, once
    assert all(e["session"] == session and e["user_id"] == logged[e["nr"]] for e in received)
    assert {e["nr"] for e in received} == found
    assert "is corrupt" in capfd.readouterr().err
    aside = [p for p in folder.glob("cache.db.corrupt-*") if p.name[-4:] not in ("-wal", "-shm")]
    assert len(aside) == 1 and aside[0].stat().st_size >= GARBAGE  # kept, whole


def damaged_queue(collector: DevCollector, folder: Path, n: int) -> tuple[str, dict[int, int]]:
    """``n`` one-event chunks (several pages of rows), a middle table leaf overwritten.

    And the page of diskcache's settings, which every open reads: the
    damage is found at the open.
    """
    session, logged = fill(collector, folder, n)
    damaged_queue_pages(folder)
    return session, logged


def damaged_queue_pages(folder: Path) -> None:
    """A middle table leaf and the settings page of the folder's database overwritten."""
    checkpoint(folder)
    db = folder / "cache.db"
    leaves = [page for name, page, kind in pages(db) if name == "Cache" and kind == "leaf"]
    (settings,) = [page for name, page, _ in pages(db) if name == "Settings"]
    with open(db, "r+b") as f:
        for page in (leaves[len(leaves) // 2], settings):
            f.seek((page - 1) * 4096)
            f.write(os.urandom(4096))


def salvage_markers(folder: Path) -> int:
    con = sqlite3.connect(folder / "cache.db")
    try:
        ((count,),) = con.execute(
            "SELECT count(*) FROM Cache WHERE key > 's/salvage/' AND key < 's/salvage0'"
        ).fetchall()
    finally:
        con.close()
    return int(count)


def full_salvage(folder: Path, copy: Path) -> int:
    """What a salvage with all the time it wants carries (on a copy of the folder)."""
    shutil.copytree(folder, copy)
    queue = Queue(copy, salvage_seconds=3600)
    try:
        assert salvage_markers(copy) == 0
        return queue.pending_count()
    finally:
        queue.close()


def test_a_salvage_cut_short_goes_on_at_later_opens_and_carries_each_row_once(
    tmp_path: Path, collector: DevCollector
) -> None:
    folder = tmp_path / "queue"
    session, _ = damaged_queue(collector, folder, 1000)
    found, _ = readable(folder / "cache.db", session)
    full = full_salvage(folder, tmp_path / "copy")
    assert full >= len(found) >= 500

    seen = []
    for _ in range(100):  # one slice per open: a few opens carry it all
        queue = Queue(folder, salvage_seconds=0)
        try:
            seen.append(queue.pending_count())
        finally:
            queue.close()
        if not salvage_markers(folder):
            break
    assert len(seen) > 1, "a slice of no time carried everything at once"
    assert seen == sorted(seen) and seen[-1] == full, seen
    assert salvage_markers(folder) == 0


def test_a_salvage_goes_on_at_claims_and_each_readable_event_is_sent_once(
    tmp_path: Path, collector: DevCollector
) -> None:
    folder = tmp_path / "queue"
    session, _ = damaged_queue(collector, folder, 1000)
    found, _ = readable(folder / "cache.db", session)
    full = full_salvage(folder, tmp_path / "copy")

    queue = Queue(folder, salvage_seconds=0)  # a slice at the open, then one at each claim
    sent: Counter[int] = Counter()
    try:
        assert queue.pending_count() < full
        for _ in range(10_000):
            batch = queue.claim("me", lease_seconds=60)
            if batch is None:  # nothing carried yet to send; the next claim carries more
                if not salvage_markers(folder):
                    break
                continue
            for nr, _ in batch.frames():
                assert nr not in sent, f"nr {nr} carried again after it was sent"
                sent[nr] += 1
            queue.ack(batch)  # deleted: a slice that carried it again would send it again
        assert queue.pending_count() == 0
    finally:
        queue.close()
    assert salvage_markers(folder) == 0
    assert sum(sent.values()) == full and max(sent.values()) == 1, "an event was carried twice"
    assert set(sent) >= found


def test_a_salvage_in_progress_never_meets_a_number_given_meanwhile(
    tmp_path: Path, collector: DevCollector
) -> None:
    """New events get numbers past every number of the set-aside file, carried or not yet."""
    folder = tmp_path / "queue"
    session, _ = damaged_queue(collector, folder, 1000)
    found, _ = readable(folder / "cache.db", session)
    config = tracker_config(collector, folder, queue_size=10**6)
    with ClientTracker(**config) as t:
        new = [t.track_event("e", user_id=10_000 + i) for i in range(5)]
    assert min(new) > max(found)


def test_a_pure_garbage_file_is_reported_once_and_the_queue_works(
    tmp_path: Path, collector: DevCollector, log: logging.Logger, capfd: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "queue"
    random_garbage(collector, folder)
    handler = HamustroHandler(**tracker_config(collector, folder, queue_size=10**6))
    log.addHandler(handler)
    for i in range(3):
        log.info("e", extra={"event": "e", "user_id": i})
    assert handler.flush(timeout=10) is True
    assert sorted(e["user_id"] for e in collector.wait_for(3)) == [0, 1, 2]
    assert capfd.readouterr().err.count("is corrupt") == 1


def test_the_journal_offsets_are_carried_before_the_first_slice(
    tmp_path: Path, collector: DevCollector
) -> None:
    """Carried later, a segment's offset would come after a spool moved it in again."""
    folder = tmp_path / "queue"
    fill(collector, folder, 1000)
    queue = Queue(folder)
    try:
        with queue._transaction():  # the last row written: far past the first slice
            queue._cache.set("j/segment-1", 4096 << 32 | 7)
    finally:
        queue.close()
    damaged_queue_pages(folder)

    queue = Queue(folder, salvage_seconds=0)  # one slice: a page of rows
    try:
        assert salvage_markers(folder) == 1  # not finished
        assert queue.journal_offsets() == {"segment-1": (4096, 7)}
    finally:
        queue.close()
