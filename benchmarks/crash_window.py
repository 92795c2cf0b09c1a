"""Crash window: how many logged events sit in memory, not yet on disk, at several rates.

    python benchmarks/crash_window.py [--rates 1000,20000,max] [--seconds 5] [--quick]

For each mode (default, then ``durable=True``) and each producer rate, a
fresh ``HamustroHandler`` (default options otherwise) on its own folder,
sending to a ``DevCollector`` on loopback served from threads of this
process. One thread logs for ``--seconds`` at the rate, in a paced loop
(event ``i`` is due ``i / rate`` s after the start; ``max``: as fast as it
can). A sampler thread reads, every millisecond (or as soon as it gets the
GIL after that):

* ``buffer``: the spool buffer's length (``stats()["buffered"]``): events
  ``emit`` handed over that the spool thread has not taken yet;
* ``not on disk``: ``log.info`` calls returned minus events committed
  (``queued``) minus dropped. This is what a SIGKILL at that instant loses:
  the buffer plus the chunk the spool thread is writing.

Each is given as the max and the 99th percentile of the samples, in events
and in milliseconds of production (events / the rate the loop achieved).
Events dropped are counted too. The durable rows are measured the same way,
not assumed: there ``emit`` commits before it returns.
"""

from __future__ import annotations

import argparse
import tempfile
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
    paced,
    print_table,
    rate,
)

from hamustro_logging import HamustroHandler
from hamustro_logging.collector import DevCollector


def measure(
    collector: DevCollector, folder: Path, durable: bool, target: float | None, seconds: float
) -> list[Row]:
    handler = HamustroHandler(
        collector_url=collector.url,
        shared_secret_key=SECRET,
        queue_dir=str(folder),
        durable=durable,
        **IDS,
    )
    info = make_logger(f"window-{folder.name}", handler).info

    def log_one(i: int) -> None:
        info("order placed", extra=EXTRA)

    logged = [0]
    probes = {"buffer": buffered(handler), "not on disk": not_on_disk(handler, logged)}
    with Sampler(probes) as sampler:
        n, elapsed = paced(log_one, target, seconds, logged)
    dropped = sum(handler.stats()["dropped"].values())
    options = handler_options(handler)
    handler.flush(timeout=300)  # the next run starts with this one's threads idle
    handler.close()

    achieved = n / elapsed
    wanted = "as fast as possible" if target is None else rate(target)
    rows = [Row(f"-- {'durable' if durable else 'default'}, {wanted} ({options})", "")]
    rows.append(Row("  rate achieved (events logged)", f"{rate(achieved)} ({n:,})"))
    rows.append(Row("  dropped", f"{dropped:,}", "0", dropped == 0))
    for name in probes:
        top, p99 = sampler.max(name), sampler.percentile(name, 0.99)
        rows.append(
            Row(
                f"  {name}: max / p99",
                f"{top:,} / {p99:,} ev = {top / achieved * 1000:,.1f} / "
                f"{p99 / achieved * 1000:,.1f} ms",
            )
        )
    rows.append(
        Row(
            "  samples (effective interval)",
            f"{sampler.samples:,} ({sampler.effective_interval * 1000:.2f} ms)",
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rates", default="1000,20000,max", help="events/s, comma-separated; max: unthrottled"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="of logging, per rate")
    parser.add_argument("--modes", default="default,durable", help="default, durable or both")
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 0.5
    targets = [None if r.strip() == "max" else float(r) for r in args.rates.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]

    rows: list[Row] = []
    load_before = load()
    with (
        tempfile.TemporaryDirectory(prefix="hamustro-bench-") as name,
        dev_collector() as collector,
    ):
        for mode in modes:
            for i, target in enumerate(targets):
                folder = Path(name) / f"{mode}{i}"
                rows += measure(collector, folder, mode == "durable", target, args.seconds)
    rows.append(Row("load after", load()))
    print_table(
        f"crash window: events logged but not on disk, {args.seconds:g} s per rate; {load_before}",
        rows,
    )


if __name__ == "__main__":
    main()
