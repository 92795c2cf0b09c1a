"""End-to-end rate: events/s from the first ``log.info`` to the last event the collector accepted.

    python benchmarks/e2e_rate.py [--events 100000] [--repeats 3] [--quick] [--json PATH]

One process logs ``--events`` events through a ``HamustroHandler``
(queue_size=500) to the development collector, running in a subprocess that
writes one JSON line per accepted event; the clock stops when the file has
them all. After the last ``log.info`` the script calls ``handler.flush()``
(inside the timing): without it the last few hundred events, below
``queue_size``, would wait for the retention timer.

In the same run, side by side (interleaved, median of ``--repeats``):

* the rate at which this process merely calls ``log.info`` into a stdlib
  ``QueueHandler(SimpleQueue)`` (nothing consumes it): the reference;
* the collector's own ceiling: pre-built, signed collections of 500 events
  POSTed from ``--threads`` threads with ``http.client``, counted the same way.

``--json PATH`` also writes the figures (events/s) to ``PATH``, for
``run_all.py --plot``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging.handlers
import queue
import statistics
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from _common import EXTRA, IDS, SECRET, Collector, Row, make_handler, make_logger, print_table, rate

from hamustro_logging import build_event
from hamustro_logging.wire import (
    collection_header,
    encode_payload,
    session_id,
    sha256hex,
    signature,
)

#: The targets: end to end at least this many events/s, and at least this
#: share of the rate at which the app merely calls log.info into a QueueHandler.
TARGET_RATE = 40_000
TARGET_RATIO = 0.8


def queue_handler_rate(n: int) -> float:
    """log.info calls/s into a stdlib QueueHandler on a SimpleQueue."""
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = logging.handlers.QueueHandler(records)
    info = make_logger("queuehandler", handler).info
    start = time.perf_counter()
    for _ in range(n):
        info("order placed", extra=EXTRA)
    elapsed = time.perf_counter() - start
    handler.close()
    return n / elapsed


def e2e_rate(collector: Collector, folder: Path, n: int, queue_size: int) -> tuple[float, float]:
    """(end-to-end events/s, log.info calls/s of the same loop)."""
    handler = make_handler(collector.url, folder, queue_size=queue_size)
    info = make_logger("e2e", handler).info
    base = collector.lines()
    start = time.perf_counter()
    for _ in range(n):
        info("order placed", extra=EXTRA)
    emitted = time.perf_counter()
    handler.flush(timeout=300)
    end = collector.wait_lines(base + n, timeout=300)
    dropped = handler.stats()["dropped"]
    handler.close()
    if dropped:
        raise RuntimeError(f"the handler dropped events: {dropped}")
    return n / (end - start), n / (emitted - start)


def collection(batch: int) -> bytes:
    """A signed-to-be Collection body of ``batch`` events, as the handler would send it."""
    device = sha256hex(IDS["device_id"])
    session = session_id(device, IDS["client_id"], IDS["system_version"], IDS["product_version"])
    header = collection_header(
        device, IDS["client_id"], session, IDS["system_version"], IDS["product_version"]
    )
    event = build_event(
        EXTRA["event"], EXTRA["user_id"], EXTRA["params"], at=time.time(), ip="127.0.0.1"
    )
    return header + b"".join(encode_payload(event, nr) for nr in range(1, batch + 1))


def collector_ceiling(collector: Collector, n: int, threads: int, batch: int = 500) -> float:
    """Events/s the collector accepts from ``threads`` keep-alive clients POSTing ready bodies."""
    body = collection(batch)
    parts = urlsplit(collector.url)
    posts = max(1, n // (batch * threads))
    errors: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
        for _ in range(posts):
            stamp = str(int(time.time()))
            conn.request(
                "POST",
                "/api/v1/track",
                body,
                {
                    "Content-Type": "application/protobuf",
                    "X-Hamustro-Time": stamp,
                    "X-Hamustro-Signature": signature(stamp, body, SECRET),
                },
            )
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                errors.append(f"collector answered {response.status}")
                break
        conn.close()

    workers = [threading.Thread(target=client) for _ in range(threads)]
    base = collector.lines()
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise RuntimeError(errors[0])
    total = posts * batch * threads
    end = collector.wait_lines(base + total, timeout=300)
    return total / (end - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--queue-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=4, help="clients for the ceiling")
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.events, args.repeats = 5_000, 1

    reference: list[float] = []
    e2e: list[float] = []
    calls: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="hamustro-bench-") as tmp,
        Collector(Path(tmp) / "events.jsonl") as collector,
    ):
        for i in range(args.repeats):
            reference.append(queue_handler_rate(args.events))
            rates = e2e_rate(collector, Path(tmp) / f"q{i}", args.events, args.queue_size)
            e2e.append(rates[0])
            calls.append(rates[1])
        ceiling = collector_ceiling(collector, args.events * 2, args.threads)

    ref, end_to_end = statistics.median(reference), statistics.median(e2e)
    print_table(
        f"end-to-end rate: {args.events:,} events, one process, queue_size={args.queue_size}, "
        f"median of {args.repeats}",
        [
            Row("stdlib QueueHandler(SimpleQueue): log.info rate", rate(ref)),
            Row("HamustroHandler: log.info rate (emit loop only)", rate(statistics.median(calls))),
            Row(
                "HamustroHandler: end to end (to last accepted)",
                rate(end_to_end),
                f">= {TARGET_RATE:,}",
                end_to_end >= TARGET_RATE,
            ),
            Row(
                "end to end / QueueHandler log.info rate",
                f"{end_to_end / ref:.2f}x",
                f">= {TARGET_RATIO:.2f}x",
                end_to_end >= TARGET_RATIO * ref,
            ),
            Row(
                f"collector ceiling ({args.threads} threads x 500-event POSTs)",
                rate(ceiling),
                "> end to end",
                ceiling > end_to_end,
            ),
        ],
    )
    if args.json:
        figures = {
            "events": args.events,
            "repeats": args.repeats,
            "queue_size": args.queue_size,
            "threads": args.threads,
            "queue_handler_rate": ref,
            "emit_rate": statistics.median(calls),
            "e2e_rate": end_to_end,
            "ceiling": ceiling,
            "target_rate": TARGET_RATE,
            "target_ratio": TARGET_RATIO,
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
