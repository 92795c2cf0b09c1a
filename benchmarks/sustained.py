"""Sustained logging: 300,000 events as fast as one thread can log them, default options.

    python benchmarks/sustained.py [--events 300000] [--quick]

One thread calls ``log.info(..., extra={"event": ...})`` ``--events`` times
in a tight loop into a ``HamustroHandler`` with its default options (only
the collector, the secret, the ids and the folder are given), sending to a
``DevCollector`` on loopback served from threads of this same process
(its JSON lines go to /dev/null, no events kept in memory). After the loop
the script calls ``handler.flush()`` and waits until the collector has
accepted every event that was not dropped. A sampler thread reads, every
millisecond (or as soon as it gets the GIL after that):

* the spool buffer's length (events in memory, not yet handed to SQLite);
* events logged and not yet committed to disk (``log.info`` calls returned
  minus ``queued`` minus dropped): the buffer plus the chunk being written.

Figures: events logged, dropped (``stats()["dropped"]``, by reason), the
rate the producer sustained (events / seconds of the loop), seconds from the
first call until the collector had them all, events delivered
(``stats()["sent"]``), and the largest buffer and not-on-disk counts seen.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import (
    EXTRA,
    IDS,
    SECRET,
    Row,
    Sampler,
    buffered,
    dev_collector,
    handler_options,
    load,
    make_logger,
    not_on_disk,
    print_table,
    rate,
)

from hamustro_logging import HamustroHandler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--timeout", type=float, default=900, help="for the delivery, seconds")
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.events = 20_000
    n = args.events

    load_before = load()
    with (
        tempfile.TemporaryDirectory(prefix="hamustro-bench-") as tmp,
        dev_collector() as collector,
    ):
        handler = HamustroHandler(
            collector_url=collector.url,
            shared_secret_key=SECRET,
            queue_dir=str(Path(tmp) / "q"),
            **IDS,
        )
        info = make_logger("sustained", handler).info
        logged = [0]
        probes = {"buffer": buffered(handler), "not on disk": not_on_disk(handler, logged)}
        with Sampler(probes) as sampler:
            start = time.perf_counter()
            for i in range(n):
                info("order placed", extra=EXTRA)
                logged[0] = i + 1
            loop = time.perf_counter() - start
            dropped = dict(handler.stats()["dropped"])
            handler.flush(timeout=args.timeout)
            try:
                collector.wait_for(n - sum(dropped.values()), timeout=args.timeout)
                delivered_s: float | None = time.perf_counter() - start
            except AssertionError:
                delivered_s = None
        stats = handler.stats()
        options = handler_options(handler)
        handler.close()

    n_dropped = sum(dropped.values())
    by_reason = ", ".join(f"{k} {v:,}" for k, v in sorted(dropped.items())) or "none"
    print_table(
        f"sustained: {n:,} events logged as fast as possible, default options ({options}); "
        f"{load_before}",
        [
            Row("events logged (log.info calls)", f"{n:,}"),
            Row(
                "dropped (stats()['dropped'])", f"{n_dropped:,} ({by_reason})", "0", n_dropped == 0
            ),
            Row("rate the producer sustained (calls / loop time)", rate(n / loop)),
            Row("loop time", f"{loop:.2f} s"),
            Row(
                "first call -> collector accepted all not dropped",
                "timed out" if delivered_s is None else f"{delivered_s:.2f} s",
            ),
            Row("end to end (delivered / that time)", rate(stats["sent"] / (delivered_s or 1))),
            Row("delivered (stats()['sent'])", f"{stats['sent']:,}", f"{n:,}", stats["sent"] == n),
            Row("max buffered seen (spool buffer length)", f"{sampler.max('buffer'):,}"),
            Row("max logged and not on disk seen", f"{sampler.max('not on disk'):,}"),
            Row(
                "samples (effective interval)",
                f"{sampler.samples:,} ({sampler.effective_interval * 1000:.2f} ms)",
            ),
            Row("resent / failed attempts", f"{stats['resent']:,} / {stats['failed_attempts']:,}"),
            Row("load after", load()),
        ],
    )


if __name__ == "__main__":
    main()
