"""Emit cost: one ``log.info(..., extra={"event": ...})`` through each handler.

    python benchmarks/emit_cost.py [--rounds 15] [--calls 2000] [--json PATH]

Interleaved rounds in one process: in each round every handler in turn gets
``--calls`` calls, each timed alone with ``perf_counter_ns``; the figure is
the median over all calls. Handlers:

* stdlib ``QueueHandler`` on a ``SimpleQueue`` (the floor for a non-blocking
  handler; its queue is emptied between rounds, outside the timing);
* ``HamustroHandler`` (default: buffered, on disk within the durability window);
* ``HamustroHandler(durable=True)`` (on disk before emit returns);
* ``HamustroHandler(schema=2, env="production")`` (default otherwise), with
  the same event but ``user_id`` as a str (schema 2's type); its median and
  p90 are also given as a ratio to the default schema-1 handler's;
* python-logstash-async ``AsynchronousLogstashHandler`` (SQLite-backed).

Every Hamustro and logstash handler sends to a live local peer (the schema-2
handler to a local collector run with ``--schema 2``), so their background
threads work as in production while the app logs.

``--json PATH`` also writes each handler's median and p90 (µs) to ``PATH``,
for ``run_all.py --plot``.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from hamustro_logging import HamustroHandler

SECRET = "bench-secret"  # noqa: S105
SCHEMA1 = "HamustroHandler (default)"
SCHEMA2 = "HamustroHandler (schema=2)"


def start_collector(schema: int = 1) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "hamustro_logging.collector", "--port", "0", "--secret", SECRET,
         "--schema", str(schema), "--output", "/dev/null"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stderr is not None
    line = process.stderr.readline()
    return process, line.split("listening on ", 1)[1].strip().removesuffix("/api/v1/track")


def sink_port() -> tuple[socket.socket, int]:
    """A TCP listener that accepts and reads, discarding (logstash's peer).

    Each connection is read by its own daemon thread, so logstash's worker
    never blocks on a full socket buffer (which it reports as "timed out").
    """
    server = socket.create_server(("127.0.0.1", 0))

    def discard(conn: socket.socket) -> None:
        with conn:
            while conn.recv(1 << 16):
                pass

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # the listener was closed
                return
            threading.Thread(target=discard, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, name="logstash-sink", daemon=True).start()
    return server, server.getsockname()[1]


def hamustro(url: str, folder: Path, durable: bool, **schema2: str | int) -> HamustroHandler:
    return HamustroHandler(
        collector_url=url, shared_secret_key=SECRET, device_id="bench", client_id="bench",
        system_version="1", product_version="1", queue_dir=str(folder), durable=durable,
        queue_size=500, **schema2,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="hamustro-bench-"))
    collector, url = start_collector()
    collector2, url2 = start_collector(schema=2)
    server: socket.socket | None = None
    handlers: dict[str, logging.Handler] = {}
    simple: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handlers["stdlib QueueHandler(SimpleQueue)"] = logging.handlers.QueueHandler(simple)
    handlers[SCHEMA1] = hamustro(url, tmp / "q1", durable=False)
    handlers["HamustroHandler (durable=True)"] = hamustro(url, tmp / "q2", durable=True)
    handlers[SCHEMA2] = hamustro(url2, tmp / "q3", durable=False, schema=2, env="production")
    try:
        from logstash_async.handler import AsynchronousLogstashHandler

        server, port = sink_port()
        handlers["logstash-async AsynchronousLogstashHandler"] = AsynchronousLogstashHandler(
            "127.0.0.1", port, database_path=str(tmp / "logstash.db")
        )
    except ImportError:
        print("python-logstash-async is not installed: pip install -e '.[bench]'", file=sys.stderr)

    loggers = {}
    for name, handler in handlers.items():
        log = logging.getLogger(f"bench.{name}")
        log.propagate = False
        log.setLevel(logging.INFO)
        log.addHandler(handler)
        loggers[name] = log

    samples: dict[str, list[int]] = {name: [] for name in handlers}
    extra = {"event": "order_placed", "user_id": 7, "params": {"total": 12, "currency": "EUR"}}
    # Schema 2's user_id is a str (an int is accepted and converted, at a cost
    # a schema-2 app does not pay); everything else is the same.
    extras = {name: extra for name in handlers} | {SCHEMA2: extra | {"user_id": "7"}}
    names = list(loggers)
    for round_ in range(args.rounds):
        # Rotate who goes first: each handler follows each other one equally
        # often, so another handler's busy background threads (a durable
        # handler's sender, logstash's worker) weigh on every figure alike.
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            log = loggers[name]
            info: Callable[..., None] = log.info
            out = samples[name]
            extra = extras[name]
            clock = time.perf_counter_ns
            for _ in range(args.calls):
                start = clock()
                info("order placed", extra=extra)
                out.append(clock() - start)
            while not simple.empty():
                simple.get_nowait()
            time.sleep(0.2)  # let background threads catch up between handlers

    floor = statistics.median(samples["stdlib QueueHandler(SimpleQueue)"])
    print(f"emit cost, median of {args.rounds} interleaved rounds x {args.calls} calls "
          f"(Python {sys.version.split()[0]})")  # fmt: skip
    print(f"{'handler':<46} {'median':>9} {'p90':>9} {'vs QueueHandler':>16}")
    rows = []
    for name, values in samples.items():
        values.sort()
        median = statistics.median(values)
        p90 = values[int(len(values) * 0.9)]
        print(f"{name:<46} {median / 1000:>7.2f}us {p90 / 1000:>7.2f}us {median / floor:>15.2f}x")
        rows.append({"name": name, "median_us": median / 1000, "p90_us": p90 / 1000})
    one, two = samples[SCHEMA1], samples[SCHEMA2]
    print(f"{'schema 2 / schema 1 (default handlers)':<46} "
          f"{statistics.median(two) / statistics.median(one):>8.3f}x "
          f"{two[int(len(two) * 0.9)] / one[int(len(one) * 0.9)]:>8.3f}x")  # fmt: skip
    if args.json:
        figures = {"rounds": args.rounds, "calls": args.calls, "handlers": rows}
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")

    for handler in handlers.values():
        handler.close()
    if server is not None:
        server.close()
    for process in (collector, collector2):
        process.terminate()
        process.wait()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
