"""Emit cost under a dead collector: the collector URL on a closed port vs a live collector.

    python benchmarks/dead_collector.py [--rounds 15] [--calls 2000] [--quick]

Two ``HamustroHandler`` (queue_size=500, each its own folder) in one
process: one sends to the development collector (a subprocess), the other
to a port nobody listens on, so its send thread fails and backs off while
its queue grows. Interleaved rounds: in each, every handler in turn (the
order alternates from round to round) gets ``--calls`` calls, each timed
alone with ``perf_counter_ns``; between turns the script sleeps ``--pause``
seconds so each turn starts with the background threads idle. The figure
is the median over all calls; the target is "equal", taken as a ratio
within 0.90-1.10.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _common import EXTRA, Collector, Row, dead_url, make_handler, make_logger, print_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--pause", type=float, default=0.1)
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.calls = 3, 500

    samples: dict[str, list[int]] = {"live collector": [], "dead collector (closed port)": []}
    with tempfile.TemporaryDirectory(prefix="hamustro-bench-") as name:
        tmp = Path(name)
        with Collector(tmp / "events.jsonl") as collector:
            urls = dict(zip(samples, [collector.url, dead_url()], strict=True))
            handlers = {
                label: make_handler(url, tmp / f"q{i}", close_timeout=1.0)
                for i, (label, url) in enumerate(urls.items())
            }
            loggers = {
                label: make_logger(f"dead{i}", h) for i, (label, h) in enumerate(handlers.items())
            }
            clock = time.perf_counter_ns
            for i in range(args.rounds):
                order = list(loggers.items())
                for label, log in order if i % 2 == 0 else order[::-1]:
                    info, out = log.info, samples[label]
                    for _ in range(args.calls):
                        start = clock()
                        info("order placed", extra=EXTRA)
                        out.append(clock() - start)
                    time.sleep(args.pause)
            stats = {label: h.stats() for label, h in handlers.items()}
            for handler in handlers.values():
                handler.close()

    live, dead = (statistics.median(values) / 1000 for values in samples.values())
    p90 = {label: sorted(v)[int(len(v) * 0.9)] / 1000 for label, v in samples.items()}
    dead_stats = stats["dead collector (closed port)"]
    rows = [
        Row(f"emit median, {label}", f"{statistics.median(v) / 1000:.2f} us (p90 {p90[label]:.2f})")
        for label, v in samples.items()
    ]
    rows += [
        Row("dead / live median", f"{dead / live:.2f}x", "0.90-1.10x", 0.9 <= dead / live <= 1.1),
        Row(
            "dead: events pending / failed attempts",
            f"{dead_stats['pending']:,} / {dead_stats['failed_attempts']}",
        ),
    ]
    print_table(
        f"emit cost under a dead collector: median of {args.rounds} interleaved rounds x "
        f"{args.calls} calls",
        rows,
    )


if __name__ == "__main__":
    main()
