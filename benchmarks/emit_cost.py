"""Emit cost as the app feels it: a logging loop through each handler, delivering live.

    python benchmarks/emit_cost.py [--events 100000] [--rounds 3] [--calls 20000]
                                   [--handlers KEY,...] [--json PATH] [--quick]

Each handler runs in a fresh subprocess of its own, one at a time; the
handlers take turns in every round, the order rotated each round, so each
follows each other one equally often and a busy moment of the machine weighs
on all of them alike. In that subprocess:

1. ``--warmup`` events, then a wait until the handler's peer has them all;
2. **the loop**: ``--events`` calls of ``log.info("order placed",
   extra={"event": ..., "user_id": ..., "params": {...}})`` back to back,
   with the handler's own threads (and an agent, for that row) delivering
   to a live peer meanwhile; then the handler is told to send what is left
   (``handler.flush()``, as an app does at exit) and the subprocess waits
   until its peer has every event of the loop;
3. **the per-call pass**: ``--calls`` more calls, each timed alone with
   ``perf_counter_ns``, then delivered the same way.

Figures, per handler (the mean over the rounds; a ratio is the handler's
mean ÷ the floor's; each round's own ratio to the floor of that round is
printed too, for the spread):

* **loop**: the loop's wall time ÷ its events: what each ``log.info`` cost
  the app, the handler's background work included (its threads take the
  GIL from the app between calls). The headline;
* **CPU**: the subprocess's CPU time (``time.process_time()``: every
  thread) from the loop's first call until the peer had every event of the
  loop, ÷ the loop's events: the loop, its delivery and the tail's send;
* **median**, **p99**: of the per-call pass, each call timed alone (the
  figure this script gave before: it leaves out most of what the threads do
  between calls);
* for each ratio, a 95% interval: the rounds drawn again with replacement
  (a bootstrap, seeded), the ratio of the means in 95% of the draws: on a
  machine whose speed drifts, how far the headline could move with other
  rounds (in the JSON; the loop's is printed);
* for the rows with a peer: the events the peer received of those logged,
  and the seconds from the loop's first call until the peer had all of the
  loop's events (warm-up included, every one accounted for).

Handlers (``--handlers`` takes their keys):

* ``floor``: stdlib ``logging.handlers.QueueHandler`` into a queue nobody
  reads that keeps only the last 1,024 records (a bounded deque: the heap
  does not grow, so the garbage collector does not slow the floor): nothing
  is delivered; the floor every ratio is taken against;
* ``listener``: a ``QueueHandler`` on a ``SimpleQueue`` with a ``QueueListener`` thread
  handing every record to a ``NullHandler``: a floor with a consumer thread;
* ``logstash``: python-logstash-async's ``AsynchronousLogstashHandler``
  with its in-memory cache (``database_path=None``), its defaults otherwise,
  to a TCP sink on loopback in this process that reads and counts lines;
* ``logstash-sqlite``: the same with a SQLite file (``database_path``), only
  when named in ``--handlers``: its worker writes each event in a
  transaction of its own (a connection opened, a commit), about 100 events/s
  delivered here, so 100,000 events take many minutes;
* ``default``: ``HamustroHandler`` with the library's defaults
  (``queue_size`` 20 included), to a local collector (``python -m
  hamustro_logging.collector``, a subprocess of this script, fresh for each
  run);
* ``schema2``: ``HamustroHandler(schema=2, env="production")``, the same
  event with ``user_id`` as a str (schema 2's type), to a collector in
  ``--schema 2``;
* ``agent``: ``HamustroHandler(sender="agent")`` with a ``hamustro-logging
  agent`` running on its folder (started before, stopped after, its CPU
  reported apart), when the installed package has both; skipped with a
  line saying why otherwise;
* ``durable``: ``HamustroHandler(durable=True)``, only when named in
  ``--handlers`` (each call waits for the disk: 100,000 calls take minutes).

``--json PATH`` writes every figure (and each round's) to ``PATH``, for
``run_all.py --plot``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import logging.handlers
import queue
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import EXTRA, IDS, SECRET, Collector, agent, agent_missing, load

#: Handler key -> its name in the tables, the JSON and the chart.
NAMES = {
    "floor": "stdlib QueueHandler (bounded, unread)",
    "listener": "stdlib QueueHandler + QueueListener",
    "logstash": "logstash-async (in-memory cache)",
    "logstash-sqlite": "logstash-async (SQLite file)",
    "default": "HamustroHandler (default)",
    "schema2": "HamustroHandler (schema=2)",
    "agent": "HamustroHandler (sender=agent) + agent",
    "durable": "HamustroHandler (durable=True)",
}
#: What runs unless --handlers says otherwise (durable and logstash-sqlite take
#: minutes at full size).
DEFAULT_KEYS = ["floor", "listener", "logstash", "default", "schema2", "agent"]
#: The handlers whose peer is a local collector, and its schema.
COLLECTOR_SCHEMA = {"default": 1, "schema2": 2, "agent": 1, "durable": 1}
#: The options of each HamustroHandler row (the identity fields aside).
HAMUSTRO_OPTIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "schema2": {"schema": 2, "env": "production"},
    "agent": {"sender": "agent"},
    "durable": {"durable": True},
}
#: How long a wait for the peer to have every event may take before the run fails.
DELIVERY_TIMEOUT = 600.0


# -- the child: one handler, one subprocess ----------------------------------------


@dataclass
class Setup:
    """What the child needs of a handler: its logger, how to send the rest, how to close."""

    log: logging.Logger
    #: Have the handler send what it holds now and wait (bounded) until it says
    #: so; None when the peer (or nothing) is waited on from outside.
    push: Callable[[], Any]
    close: Callable[[], None]
    #: True: the parent watches a peer (collector, sink) and is asked to wait for it.
    external_peer: bool


class _LastRecords:
    """The floor's queue: nobody reads it, and it keeps only the last 1,024 records.

    A ``SimpleQueue`` nobody reads would keep all 100,000 records of a loop,
    and the garbage collector's passes over that growing heap would count
    against the floor (about 1 us an event here: the floor's loop ran
    slower than the same handler with a ``QueueListener`` draining it).
    ``put_nowait`` is a bounded deque's ``append``, as cheap as a queue's put.
    """

    def __init__(self) -> None:
        records: collections.deque[logging.LogRecord] = collections.deque(maxlen=1024)
        self.put_nowait = records.append


def setup(key: str, url: str, folder: Path, port: int) -> Setup:
    """Build the handler ``key`` and a logger with it alone (no propagation)."""
    log = logging.getLogger(f"bench.{key}")
    log.propagate = False
    log.setLevel(logging.INFO)
    if key == "floor":
        log.addHandler(logging.handlers.QueueHandler(_LastRecords()))  # type: ignore[arg-type]
        return Setup(log, lambda: None, lambda: None, external_peer=False)
    if key == "listener":
        records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        log.addHandler(logging.handlers.QueueHandler(records))
        listener = logging.handlers.QueueListener(records, logging.NullHandler())
        listener.start()

        def drain() -> None:  # stop() hands the listener a sentinel and joins it
            listener.stop()
            listener.start()

        return Setup(log, drain, listener.stop, external_peer=False)
    if key.startswith("logstash"):
        from logstash_async.handler import AsynchronousLogstashHandler

        database = str(folder / "logstash.db") if key == "logstash-sqlite" else None
        stash = AsynchronousLogstashHandler("127.0.0.1", port, database)
        log.addHandler(stash)
        return Setup(log, stash.flush, stash.close, external_peer=True)

    from hamustro_logging import HamustroHandler

    options = HAMUSTRO_OPTIONS[key]
    handler = HamustroHandler(
        collector_url=url,
        shared_secret_key=SECRET,
        queue_dir=str(folder),
        close_timeout=DELIVERY_TIMEOUT,
        **IDS,
        **options,
    )
    log.addHandler(handler)

    def push() -> None:
        if not handler.flush(timeout=DELIVERY_TIMEOUT):
            print(f"{key}: flush() did not deliver everything", file=sys.stderr)

    return Setup(log, push, handler.close, external_peer=True)


def child(key: str, url: str, folder: Path, port: int, args: argparse.Namespace) -> None:
    """Log through handler ``key``; print one line of JSON figures.

    Talks to the parent on stdin/stdout: ``await N`` asks it to answer once
    the peer has N events of this process (``ok``, or ``timeout``);
    with ``--hold`` (for emit_profile.py), ``ready`` before the loop and
    ``done`` after its delivery each wait for a line from the parent.
    """
    s = setup(key, url, folder, port)
    info = s.log.info
    # Schema 2's user_id is a str (an int is accepted and converted, at a cost
    # a schema-2 app does not pay); everything else is the same.
    extra = EXTRA | {"user_id": "7"} if key == "schema2" else EXTRA
    delivered = {"ok": True}

    def deliver(total: int) -> None:
        s.push()
        if s.external_peer:
            print(f"await {total}", flush=True)
            if sys.stdin.readline().strip() != "ok":
                delivered["ok"] = False

    def hold(word: str) -> None:
        if args.hold:
            print(word, flush=True)
            sys.stdin.readline()

    for _ in range(args.warmup):
        info("order placed", extra=extra)
    deliver(args.warmup)
    hold("ready")

    clock, cpu = time.perf_counter, time.process_time
    threads_start = thread_cpu()
    start, cpu_start = clock(), cpu()
    for _ in range(args.events):
        info("order placed", extra=extra)
    end, cpu_end = clock(), cpu()
    deliver(args.warmup + args.events)
    all_in, cpu_all_in = clock(), cpu()
    threads_end = thread_cpu()
    hold("done")

    ns = time.perf_counter_ns
    samples = [0] * args.calls
    for i in range(args.calls):
        t = ns()
        info("order placed", extra=extra)
        samples[i] = ns() - t
    deliver(args.warmup + args.events + args.calls)
    s.close()

    samples.sort()
    n = len(samples)
    per_call = {
        "median_us": statistics.median(samples) / 1000 if n else None,
        "p90_us": samples[min(n - 1, int(n * 0.90))] / 1000 if n else None,
        "p99_us": samples[min(n - 1, int(n * 0.99))] / 1000 if n else None,
    }
    print(
        json.dumps(
            {
                "loop_us": (end - start) / args.events * 1e6,
                "loop_cpu_us": (cpu_end - cpu_start) / args.events * 1e6,
                "cpu_us": (cpu_all_in - cpu_start) / args.events * 1e6,
                "delivered_s": all_in - start if s.external_peer else None,
                "all_delivered": delivered["ok"],
                # Each thread's CPU over the same span, by name (emit_profile.py).
                "thread_cpu_us": {
                    name: (threads_end[name] - threads_start.get(name, 0.0)) / args.events * 1e6
                    for name in threads_end
                },
                **per_call,
            }
        ),
        flush=True,
    )


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each live thread of this process so far, by thread name."""
    seconds = {}
    for thread in threading.enumerate():
        if thread.ident is None:
            continue
        try:
            clock = time.pthread_getcpuclockid(thread.ident)
            seconds[thread.name] = time.clock_gettime(clock)
        except OSError:  # it ended meanwhile
            continue
    return seconds


# -- the parent: peers, rounds, figures --------------------------------------------


class Sink:
    """A TCP listener on loopback that reads and counts lines (logstash's peer).

    Each connection is read by its own daemon thread, so logstash's worker
    never blocks on a full socket buffer. ``count`` is every line received
    since it started; the main thread reads it, the readers add to it.
    """

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.count = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="logstash-sink", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:  # the listener was closed
                return
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(1 << 16):
                lines = data.count(b"\n")
                with self._lock:
                    self.count += lines

    def close(self) -> None:
        self.server.close()


def run_child(key: str, args: argparse.Namespace, tmp: Path, sink: Sink | None) -> dict[str, Any]:
    """One run of handler ``key`` in a fresh subprocess (and a fresh collector); its figures."""
    folder = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=tmp))
    logged = args.warmup + args.events + args.calls
    port = sink.port if sink is not None else 0
    out: dict[str, float] = {}
    try:
        if key in COLLECTOR_SCHEMA:
            with Collector(folder / "events.jsonl", schema=COLLECTOR_SCHEMA[key]) as collector:
                with (
                    agent(collector.url, folder, tmp / "agent.log", out)
                    if key == "agent"
                    else (contextlib.nullcontext())
                ):
                    figures = _talk(key, args, collector.url, folder, port, collector.lines)
                figures["delivered"] = collector.lines()
        elif key.startswith("logstash"):
            assert sink is not None
            base = sink.count
            figures = _talk(key, args, "-", folder, port, lambda: sink.count - base)
            figures["delivered"] = sink.count - base
        else:
            figures = _talk(key, args, "-", folder, port, lambda: 0)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if "delivered" in figures:
        figures["logged"] = logged
    if "agent_cpu_s" in out:
        figures["agent_cpu_us"] = out["agent_cpu_s"] / logged * 1e6
    return figures


def _talk(
    key: str, args: argparse.Namespace, url: str, folder: Path, port: int, peer: Callable[[], int]
) -> dict[str, Any]:
    """Run the child, answer its ``await`` lines from ``peer``, return its figures."""
    command = [
        sys.executable, __file__, "--child", key, url, str(folder), str(port),
        "--events", str(args.events), "--calls", str(args.calls), "--warmup", str(args.warmup),
    ]  # fmt: skip
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as p:
        assert p.stdin is not None and p.stdout is not None
        for line in p.stdout:
            if line.startswith("await "):
                wanted = int(line.split()[1])
                deadline = time.monotonic() + DELIVERY_TIMEOUT
                while peer() < wanted and time.monotonic() < deadline:
                    time.sleep(0.002)
                p.stdin.write("ok\n" if peer() >= wanted else "timeout\n")
                p.stdin.flush()
            elif line.startswith("{"):
                result: dict[str, Any] = json.loads(line)
                break
        else:
            raise RuntimeError(f"{key}: the child ended without figures (exit {p.wait()})")
    if p.returncode:
        raise RuntimeError(f"{key}: the child exited with {p.returncode}")
    return result


#: The per-round figures that get a ratio to the floor's.
RATIOS = ("loop_us", "cpu_us", "median_us", "p99_us")


def summarize(keys: list[str], rounds: list[dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per handler: the mean over rounds of each figure, and its ratio to the floor's mean.

    Means, so that a figure and its ratio agree (a ratio of medians taken
    from different rounds would not); each round's own ratio is kept too,
    for the spread.
    """
    rows: list[dict[str, Any]] = []
    for key in keys:
        runs = [r[key] for r in rounds]
        row: dict[str, Any] = {"key": key, "name": NAMES[key], "rounds": runs}
        for name in {n for run in runs for n, v in run.items() if isinstance(v, int | float)}:
            values = [run[name] for run in runs if run.get(name) is not None]
            if values and not isinstance(values[0], bool):
                row[name] = statistics.fmean(values)
        floor = rows[0] if rows else row  # keys[0] is the floor
        for name in RATIOS:
            if row.get(name) is not None and floor.get(name):
                row[f"{name}_ratio"] = row[name] / floor[name]
                row[f"{name}_ratios"] = [
                    r[key][name] / r["floor"][name]
                    for r in rounds
                    if r[key].get(name) is not None and r["floor"].get(name)
                ]
            if len(rounds) > 1 and key != "floor" and row.get(name) is not None:
                row[f"{name}_interval"] = interval(rounds, key, name)
        row["all_delivered"] = all(run["all_delivered"] for run in runs)
        rows.append(row)
    return rows


def interval(
    rounds: list[dict[str, dict[str, Any]]], key: str, name: str, draws: int = 4000
) -> tuple[float, float]:
    """A 95% bootstrap interval of the ratio of ``key``'s mean ``name`` to the floor's.

    The rounds are drawn again with replacement, each whole (a handler and
    the floor of the same round stay together), ``draws`` times with a fixed
    seed; the ratio of the means of each draw, its 2.5th and 97.5th
    percentiles. How far the headline ratio could move with other rounds on
    a machine whose speed drifts from one second to the next.
    """
    pairs = [
        (r[key][name], r["floor"][name])
        for r in rounds
        if r[key].get(name) is not None and r["floor"].get(name)
    ]
    draw = random.Random(0).choices
    ratios = sorted(
        sum(a for a, _ in sample) / sum(b for _, b in sample)
        for sample in (draw(pairs, k=len(pairs)) for _ in range(draws))
    )
    return ratios[int(draws * 0.025)], ratios[int(draws * 0.975) - 1]


def print_tables(rows: list[dict[str, Any]], args: argparse.Namespace, note: str) -> None:
    print(
        f"\nemit cost as the app feels it: {args.events:,} events a loop, mean of "
        f"{args.rounds} interleaved rounds, each handler in a fresh process "
        f"(Python {sys.version.split()[0]}; {note})"
    )
    head = ("handler", "loop/event", "CPU/event", "call median", "call p99")
    print(f"  {head[0]:<44} {head[1]:>17} {head[2]:>17} {head[3]:>17} {head[4]:>17}")
    for row in rows:
        cells = []
        for name in RATIOS:
            value, ratio = row.get(name), row.get(f"{name}_ratio")
            cells.append(
                "-".rjust(17) if value is None else f"{value:>7.2f} us {ratio:>5.2f}x".rjust(17)
            )
        print(f"  {row['name']:<44} {' '.join(cells)}")
    print(
        "  loop/event: the loop's wall time / its events. CPU/event: the process's CPU (all\n"
        "  threads) from the loop's first call until the peer had all its events, / events.\n"
        "  call median, p99: a separate pass, each call timed alone. Each figure: the mean\n"
        "  of the rounds; x: / the floor's (the first row's)."
    )
    print("\n  loop/event / the floor, round by round, and a 95% interval of the mean's ratio:")
    for row in rows:
        ratios = " ".join(f"{r:.2f}x" for r in row.get("loop_us_ratios", []))
        low_high = row.get("loop_us_interval")
        if low_high:
            ratios += f"  [{low_high[0]:.2f}x, {low_high[1]:.2f}x]"
        print(f"  {row['name']:<44} {ratios}")
    print(
        "  [a, b]: the rounds drawn again with replacement 4,000 times (bootstrap), the ratio\n"
        "  of the means in 95% of the draws."
    )

    print("\n  delivery (warm-up + loop + per-call pass, all to the peer)")
    print(
        f"  {'handler':<44} {'delivered/logged':>19} {'all of loop in':>15} "
        f"{'loop CPU/event':>15} {'agent CPU/event':>16}"
    )
    for row in rows:
        if "logged" not in row:
            continue
        delivered = f"{row['delivered']:,.0f}/{row['logged']:,.0f}"
        if not row["all_delivered"]:
            delivered += " !"
        agent_cpu = f"{row['agent_cpu_us']:.2f} us" if "agent_cpu_us" in row else "-"
        print(
            f"  {row['name']:<44} {delivered:>19} {row['delivered_s']:>13.2f} s "
            f"{row['loop_cpu_us']:>12.2f} us {agent_cpu:>16}"
        )
    print(
        "  all of loop in: from the loop's first call until the peer had every event of the\n"
        "  loop (the handler told to send the rest right after it). loop CPU/event: the\n"
        "  process's CPU during the loop alone."
    )
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="calls in each loop")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=20_000, help="calls timed one by one")
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument(
        "--handlers",
        default=",".join(DEFAULT_KEYS),
        help=f"comma-separated keys among {', '.join(NAMES)} (default: {', '.join(DEFAULT_KEYS)})",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--child", nargs=4, metavar=("KEY", "URL", "FOLDER", "PORT"),
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--hold", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        key, url, folder, port = args.child
        child(key, url, Path(folder), int(port), args)
        return
    if args.quick:
        args.events, args.rounds, args.calls, args.warmup = 5_000, 1, 1_000, 500

    keys = [k.strip() for k in args.handlers.split(",") if k.strip()]
    unknown = [k for k in keys if k not in NAMES]
    if unknown:
        parser.error(f"unknown handler key(s): {', '.join(unknown)}")
    keys = ["floor", *(k for k in keys if k != "floor")]  # every ratio is to it
    skipped: dict[str, str] = {}
    try:
        import logstash_async  # noqa: F401
    except ImportError:
        for key in ("logstash", "logstash-sqlite"):
            if key in keys:
                skipped[key] = "python-logstash-async is not installed (the bench extra)"
    if "agent" in keys and (why := agent_missing()):
        skipped["agent"] = why
    keys = [k for k in keys if k not in skipped]
    for key, why in skipped.items():
        print(f"skipped {NAMES[key]}: {why}")

    start_load = load()
    rounds: list[dict[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="hamustro-bench-") as name:
        tmp = Path(name)
        sink = Sink() if any(k.startswith("logstash") for k in keys) else None
        try:
            for round_ in range(args.rounds):
                shift = round_ % len(keys)
                figures: dict[str, dict[str, Any]] = {}
                for key in keys[shift:] + keys[:shift]:
                    figures[key] = run_child(key, args, tmp, sink)
                    print(
                        f"round {round_ + 1}: {NAMES[key]:<44} "
                        f"{figures[key]['loop_us']:7.2f} us/event", flush=True
                    )  # fmt: skip
                rounds.append(figures)
        finally:
            if sink is not None:
                sink.close()
    note = f"{start_load} at the start, {load()} at the end"
    rows = summarize(keys, rounds)
    print_tables(rows, args, note)
    if args.json:
        results = {
            "events": args.events,
            "rounds": args.rounds,
            "calls": args.calls,
            "warmup": args.warmup,
            "python": sys.version.split()[0],
            "load": note,
            "handlers": rows,
            "skipped": skipped,
        }
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
