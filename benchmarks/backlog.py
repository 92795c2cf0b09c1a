"""Backlog: a queue folder with 1,000,000 events pending on disk.

    python benchmarks/backlog.py [--events 1000000] [--quick]

1. Fill the folder fast with ``ClientTracker.store`` in batches of 5,000
   (events made by ``build_event``), the collector URL on a dead port: the
   port the live collector of step 4 listens on later (a folder sends its
   events only to the collector they were logged for).
2. Open a ``HamustroHandler`` on it in a fresh subprocess (collector still
   dead): constructor time and ``VmRSS`` right after it and one second later
   (the send thread has tried by then), against the same subprocess opening
   an empty folder.
3. Disk bytes per event: ``du`` of the folder (allocated blocks) / events.
4. Drain: start a live collector, open a handler on the folder, and count
   events/s from the constructor call until the collector has accepted all.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from _common import (
    EXTRA,
    IDS,
    SECRET,
    Collector,
    Row,
    dead_url,
    make_handler,
    print_table,
    rate,
    rss_kib,
)

from hamustro_logging import ClientTracker, build_event

BATCH = 5_000


def fill(folder: Path, url: str, n: int) -> float:
    """Store ``n`` events in ``folder``; return events/s."""
    event = build_event(EXTRA["event"], EXTRA["user_id"], EXTRA["params"], at=time.time())
    events = [event] * BATCH
    start = time.perf_counter()
    with ClientTracker(url, SECRET, queue_dir=folder, **IDS) as tracker:
        for done in range(0, n, BATCH):
            tracker.store(events[: min(BATCH, n - done)])
        if tracker.queue.pending_count() != n:
            raise RuntimeError(f"stored {tracker.queue.pending_count()} events, not {n}")
    return n / (time.perf_counter() - start)


def du(folder: Path) -> tuple[int, int]:
    """(allocated bytes as ``du`` counts them, apparent bytes) of every file in ``folder``."""
    blocks = size = 0
    for root, _, files in os.walk(folder):
        for name in files:
            st = os.stat(os.path.join(root, name))
            blocks += st.st_blocks * 512
            size += st.st_size
    return blocks, size


def child_open(folder: str, url: str) -> None:
    """In a fresh process: open a handler on ``folder`` (``url``: dead) and print figures."""
    before = rss_kib()
    start = time.perf_counter()
    handler = make_handler(url, Path(folder), close_timeout=1.0)
    opened = time.perf_counter() - start
    at_open = rss_kib()
    time.sleep(1.0)
    later = rss_kib()
    pending = handler.stats()["pending"]
    handler.close()
    print(
        json.dumps(
            {
                "open_s": opened,
                "rss_before": before,
                "rss_open": at_open,
                "rss_1s": later,
                "pending": pending,
            }
        )
    )


def measure_open(folder: Path, url: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child-open", str(folder), url],
        check=True,
        capture_output=True,
        text=True,
    )
    figures: dict[str, float] = json.loads(out.stdout.splitlines()[-1])
    return figures


def drain(folder: Path, tmp: Path, port: int, n: int) -> tuple[float, int]:
    """(events/s from opening a handler on the backlog to the last event accepted, pending left)."""
    with Collector(tmp / "events.jsonl", port) as collector:
        start = time.perf_counter()
        handler = make_handler(collector.url, folder)
        end = collector.wait_lines(n, timeout=1800)
        # The collector writes a batch's lines before it answers 200, and the
        # handler deletes the batch after the answer: give the last ack a moment.
        deadline = time.perf_counter() + 30
        while (left := int(handler.stats()["pending"])) and time.perf_counter() < deadline:
            time.sleep(0.01)
        handler.close()
    return n / (end - start), left


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--child-open", nargs=2, metavar=("FOLDER", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_open:
        child_open(*args.child_open)
        return
    if args.quick:
        args.events = 20_000
    n = args.events

    with tempfile.TemporaryDirectory(prefix="hamustro-bench-") as name:
        tmp = Path(name)
        folder, empty = tmp / "backlog", tmp / "empty"
        # The live collector of the drain listens on this port later; dead until then.
        url = dead_url()
        port = urlsplit(url).port
        assert port is not None
        fill_rate = fill(folder, url, n)
        disk, apparent = du(folder)
        empty_open = measure_open(empty, url)
        full_open = measure_open(folder, url)
        if full_open["pending"] != n:
            raise RuntimeError(f"the reopened queue has {full_open['pending']} events, not {n}")
        drain_rate, left = drain(folder, tmp, port, n)

    mib = 1024.0
    rss_delta = (full_open["rss_1s"] - empty_open["rss_1s"]) / mib
    rss_open_delta = (full_open["rss_open"] - empty_open["rss_open"]) / mib
    print_table(
        f"backlog: {n:,} events pending on disk",
        [
            Row("fill (ClientTracker.store, 5,000 a call)", rate(fill_rate)),
            Row("open HamustroHandler, empty folder", f"{empty_open['open_s'] * 1000:.1f} ms"),
            Row(
                "open HamustroHandler, backlog",
                f"{full_open['open_s'] * 1000:.1f} ms",
                "< 200 ms",
                full_open["open_s"] < 0.2,
            ),
            Row(
                "RSS after open: empty / backlog",
                f"{empty_open['rss_open'] / mib:.1f} / {full_open['rss_open'] / mib:.1f} MiB",
            ),
            Row(
                "RSS after open + 1 s: empty / backlog",
                f"{empty_open['rss_1s'] / mib:.1f} / {full_open['rss_1s'] / mib:.1f} MiB",
            ),
            Row(
                "RSS backlog - empty, after open",
                f"{rss_open_delta:+.1f} MiB",
                "< 30 MiB",
                rss_open_delta < 30,
            ),
            Row(
                "RSS backlog - empty, after open + 1 s",
                f"{rss_delta:+.1f} MiB",
                "< 30 MiB",
                rss_delta < 30,
            ),
            Row(
                "disk per event (du; apparent size)",
                f"{disk / n:.0f} B ({apparent / n:.0f} B)",
                "< 150 B",
                disk / n < 150,
            ),
            Row(
                "drain to a live collector (open -> last accepted)",
                rate(drain_rate),
                ">= 40,000",
                drain_rate >= 40_000,
            ),
            Row("events left pending after the drain", f"{left:,}", "0", left == 0),
        ],
    )


if __name__ == "__main__":
    main()
