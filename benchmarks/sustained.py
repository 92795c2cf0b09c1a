"""Sustained logging: a producer at several rates, up to faster than the disk; 0 dropped.

    python benchmarks/sustained.py [--events 300000] [--rates 1000,20000,0] [--seconds 10]

For each producer rate (events/s; 0 = as fast as the loop goes), one process
logs through a ``HamustroHandler`` with its default options (``max_buffer``,
``on_full="wait"``) to the development collector in a subprocess. The
unthrottled run logs ``--events`` events; a throttled run logs for
``--seconds``. A sampler thread reads, every millisecond, how many events
are in memory and not yet on disk (the buffer plus the chunk being
written): the crash window. Printed per rate: events/s achieved by the
producer, end to end (first ``log.info`` to the last event the collector
accepted), events dropped, and the window's maximum and 99th percentile.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from _common import EXTRA, Collector, Row, make_handler, make_logger, print_table, rate


def run(collector: Collector, folder: Path, target: float, n: int) -> list[Row]:
    handler = make_handler(collector.url, folder)
    info = make_logger(f"sustained{int(target)}", handler).info
    flusher = handler._flusher  # the figures are about its buffer
    samples: list[int] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            samples.append(flusher.unwritten())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    base = collector.lines()
    sampler.start()
    start = time.perf_counter()
    if target <= 0:
        for _ in range(n):
            info("order placed", extra=EXTRA)
    else:
        done = 0
        while done < n:
            due = min(n, int((time.perf_counter() - start) * target) + 1)
            while done < due:
                info("order placed", extra=EXTRA)
                done += 1
            time.sleep(0.0005)
    emitted = time.perf_counter()
    sampling.set()
    sampler.join()
    handler.flush(timeout=300)
    end = collector.wait_lines(base + n, timeout=300)
    dropped = sum(handler.stats()["dropped"].values())
    handler.close()
    window = sorted(samples)
    p99 = window[int(len(window) * 0.99)] if window else 0
    label = "unthrottled" if target <= 0 else f"{target:,.0f}/s"
    return [
        Row(f"{label}: events", f"{n:,}"),
        Row(f"{label}: producer rate", rate(n / (emitted - start))),
        Row(f"{label}: end to end", rate(n / (end - start))),
        Row(f"{label}: dropped", f"{dropped:,}", "0", dropped == 0),
        Row(f"{label}: in memory, max", f"{max(window, default=0):,}"),
        Row(f"{label}: in memory, p99", f"{p99:,}"),
        Row(f"{label}: in memory, median", f"{statistics.median(window or [0]):,.0f}"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--rates", default="1000,20000,0", help="events/s; 0 = unthrottled")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of a throttled run")
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.events, args.seconds = 5_000, 1.0
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp, Collector(Path(tmp) / "out.jsonl") as collector:
        for i, text in enumerate(args.rates.split(",")):
            target = float(text)
            n = args.events if target <= 0 else int(target * args.seconds)
            rows += run(collector, Path(tmp) / f"q{i}", target, n)
    print_table("sustained logging, default options (max_buffer, on_full='wait')", rows)


if __name__ == "__main__":
    main()
