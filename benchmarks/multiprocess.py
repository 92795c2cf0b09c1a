"""Several processes on one queue folder (gunicorn workers), against one process.

    python benchmarks/multiprocess.py [--procs 4] [--events 100000] [--repeats 3] [--quick]

``--procs`` processes each log ``events / procs`` events through their own
``HamustroHandler`` on one shared folder; compared with one process logging
all ``--events``. When the installed package has ``hamustro-logging agent``
and ``sender="agent"``, a third setup: one agent on the folder and
``--procs`` processes with ``sender="agent"`` (they start no thread; the
agent sends); skipped with a line saying why otherwise. Every process is
started and has opened its handler before a "go" is written to all of them
at once. Figures:

* combined end-to-end rate: events / (first ``log.info`` of any process ->
  the collector has accepted the last event). Each process calls
  ``handler.flush()`` after its last ``log.info`` (the tail below
  ``queue_size`` would otherwise wait for the retention timer);
* each process's median emit cost (every call timed alone).

Interleaved, median of ``--repeats``. On a machine with fewer cores than
processes the processes share cores, which the figure shows as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    EXTRA,
    Collector,
    Row,
    agent,
    agent_missing,
    make_handler,
    make_logger,
    print_table,
    rate,
)


def child(url: str, folder: str, n: int, sender: str) -> None:
    """One worker: open a handler, wait for "go" on stdin, log ``n`` events, flush."""
    options = {"sender": sender} if sender != "-" else {}
    handler = make_handler(url, Path(folder), close_timeout=30.0, **options)
    info = make_logger("worker", handler).info
    print("ready", flush=True)
    sys.stdin.readline()
    clock = time.perf_counter_ns
    costs = []
    first = time.time()
    for _ in range(n):
        start = clock()
        info("order placed", extra=EXTRA)
        costs.append(clock() - start)
    deadline = time.monotonic() + 300
    while not handler.flush(timeout=60) and time.monotonic() < deadline:
        time.sleep(0.01)  # other processes hold leases on what is left: they are sending it
    dropped = handler.stats()["dropped"]
    handler.close()
    costs.sort()
    print(
        json.dumps(
            {
                "first": first,
                "median_ns": statistics.median(costs),
                "p90_ns": costs[int(len(costs) * 0.9)],
                "dropped": dropped,
            }
        )
    )


def run(
    collector: Collector, folder: Path, procs: int, total: int, sender: str = "-"
) -> tuple[float, list[float]]:
    """(combined events/s, median emit cost in µs of each process)."""
    each = total // procs
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", collector.url, str(folder), str(each), sender],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(procs)
    ]
    for worker in workers:
        assert worker.stdout is not None
        if worker.stdout.readline().strip() != "ready":
            raise RuntimeError("a worker did not start")
    base = collector.lines()
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    collector.wait_lines(base + each * procs, timeout=600)
    end = time.time()
    results = [
        json.loads(worker.communicate(timeout=120)[0].splitlines()[-1]) for worker in workers
    ]
    if any(r["dropped"] for r in results):
        raise RuntimeError(f"events were dropped: {[r['dropped'] for r in results]}")
    first = min(r["first"] for r in results)
    return each * procs / (end - first), [r["median_ns"] / 1000 for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--events", type=int, default=100_000, help="in all, for both setups")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument(
        "--child", nargs=4, metavar=("URL", "FOLDER", "N", "SENDER"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), args.child[3])
        return
    if args.quick:
        args.events, args.repeats = 8_000, 1

    no_agent = agent_missing()
    if no_agent:
        print(f"skipped: one agent + {args.procs} processes with sender='agent': {no_agent}")
    one: list[float] = []
    many: list[float] = []
    with_agent: list[float] = []
    agent_cpu: list[float] = []
    one_cost: list[float] = []
    many_costs: list[list[float]] = []
    agent_costs: list[list[float]] = []
    with tempfile.TemporaryDirectory(prefix="hamustro-bench-") as name:
        tmp = Path(name)
        with Collector(tmp / "events.jsonl") as collector:
            for i in range(args.repeats):
                combined, costs = run(collector, tmp / f"one{i}", 1, args.events)
                one.append(combined)
                one_cost += costs
                combined, costs = run(collector, tmp / f"many{i}", args.procs, args.events)
                many.append(combined)
                many_costs.append(costs)
                if not no_agent:
                    out: dict[str, float] = {}
                    folder = tmp / f"agent{i}"
                    with agent(collector.url, folder, tmp / "agent.log", out):
                        combined, costs = run(collector, folder, args.procs, args.events, "agent")
                    with_agent.append(combined)
                    agent_costs.append(costs)
                    agent_cpu.append(out["agent_cpu_s"] / args.events * 1e6)

    single, combined = statistics.median(one), statistics.median(many)
    per_process = [statistics.median(costs) for costs in zip(*many_costs, strict=True)]
    rows = []
    if with_agent:
        by_agent = statistics.median(with_agent)
        agent_each = [statistics.median(costs) for costs in zip(*agent_costs, strict=True)]
        rows = [
            Row(f"1 agent + {args.procs} processes (sender='agent'): combined", rate(by_agent)),
            Row(
                f"1 agent + {args.procs} processes: emit cost median, each",
                " / ".join(f"{c:.2f}" for c in agent_each) + " us",
            ),
            Row("1 agent: its CPU per event", f"{statistics.median(agent_cpu):.2f} us"),
            Row(f"1 agent + {args.procs} processes / 1 process", f"{by_agent / single:.2f}x"),
        ]
    print_table(
        f"several processes on one folder: {args.events:,} events, {args.procs} processes x "
        f"{args.events // args.procs:,} vs 1 x {args.events:,}, median of {args.repeats} "
        f"({os.cpu_count()} cores)",
        [
            Row("1 process: end to end", rate(single)),
            Row("1 process: emit cost median", f"{statistics.median(one_cost):.2f} us"),
            Row(f"{args.procs} processes: combined end to end", rate(combined)),
            Row(
                f"{args.procs} processes: emit cost median, each",
                " / ".join(f"{c:.2f}" for c in per_process) + " us",
            ),
            Row(
                f"combined {args.procs} processes / 1 process",
                f"{combined / single:.2f}x",
                ">= 1.50x",
                combined >= 1.5 * single,
            ),
            *rows,
        ],
    )


if __name__ == "__main__":
    main()
