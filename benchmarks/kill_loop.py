"""Kill loop: SIGKILL a process that logs ~19k events/s, restart it on its folder, count losses.

    python benchmarks/kill_loop.py [--kills 30] [--rate 19000] [--modes default,durable] [--quick]

For each mode (default options, then ``durable=True``), with a fresh
folder and a fresh ``DevCollector`` on loopback in this process (its JSON
lines written to a file):

1. ``--kills`` times: start a child process that opens a ``HamustroHandler``
   (default options otherwise) on the folder, says "ready", then logs in a
   paced loop at ``--rate`` events/s, each event carrying a unique id in its
   params. Every ``--ack-every`` events, after those ``log.info`` calls
   returned, it writes the highest id it has logged to a pipe: those events
   are *acknowledged*, the app was told they are logged (each is in the
   handler's journal, a file that outlives the process). The parent
   SIGKILLs it at a random moment, ``--min-run`` to ``--max-run`` seconds
   after "ready" (``--seed`` makes the moments repeatable).
2. A final child opens a handler on the folder and flushes until nothing is
   pending (its flush adopts the killed children's journal segments and
   moves them into the store); it reports its ``stats()``.
3. The ids the collector received are compared with the acknowledged ones:
   *lost* (acknowledged, never received), *duplicates* (received more than
   once), and ``stats()["resent"]``: the final process's, plus the last
   value each killed child wrote with an acknowledgement (so at least what
   was counted; a resend counted after a child's last acknowledgement is
   not seen).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import IDS, SECRET, Row, dev_collector, load, make_logger, paced, print_table, rate

from hamustro_logging import HamustroHandler

#: Ids of run ``k`` start at ``k * ID_STRIDE``: no run logs that many.
ID_STRIDE = 10**8


def open_handler(url: str, folder: str, durable: bool) -> HamustroHandler:
    return HamustroHandler(
        collector_url=url, shared_secret_key=SECRET, queue_dir=folder, durable=durable, **IDS
    )


def child(url: str, folder: str, base: int, durable: bool, target: float, ack_every: int) -> None:
    """Log ids ``base``, ``base + 1``, ... at ``target`` events/s until killed, acknowledging."""
    handler = open_handler(url, folder, durable)
    info = make_logger("kill", handler).info
    counters = handler.tracker.stats_counters
    os.write(1, b"ready\n")

    def log_one(i: int) -> None:
        info(
            "order placed",
            extra={"event": "order_placed", "user_id": 7, "params": {"id": base + i}},
        )
        if (i + 1) % ack_every == 0:
            dropped = sum(counters.dropped.values())
            os.write(1, f"{base + i} {counters.resent} {dropped}\n".encode())

    paced(log_one, target, math.inf, [0])


def final(url: str, folder: str) -> None:
    """Send everything left in the folder; print this process's stats() as JSON."""
    handler = open_handler(url, folder, durable=False)
    deadline = time.monotonic() + 600
    while not handler.flush(timeout=60) and time.monotonic() < deadline:
        time.sleep(0.1)
    stats = handler.stats()
    handler.close()
    print(json.dumps({k: stats[k] for k in ("sent", "resent", "pending", "failed_attempts")}))


@dataclass
class Run:
    base: int
    last: int | None = None  # highest acknowledged id
    resent: int = 0  # the child's stats()["resent"] at its last acknowledgement
    dropped: int = 0
    seconds: float = 0.0  # from "ready" to the kill

    @property
    def acknowledged(self) -> int:
        return 0 if self.last is None else self.last - self.base + 1


@dataclass
class Outcome:
    runs: list[Run] = field(default_factory=list)
    final: dict[str, int] = field(default_factory=dict)
    received: collections.Counter[int] = field(default_factory=collections.Counter)


def kill_loop(args: argparse.Namespace, tmp: Path, durable: bool, rng: random.Random) -> Outcome:
    mode = "durable" if durable else "default"
    folder, output = tmp / mode, tmp / f"{mode}.jsonl"
    out = Outcome()
    with dev_collector(output) as collector:
        for k in range(args.kills):
            run = Run(base=k * ID_STRIDE)
            command = [sys.executable, __file__, "--child", collector.url, str(folder)]
            command += [str(run.base), mode, str(args.rate), str(args.ack_every)]
            with subprocess.Popen(command, stdout=subprocess.PIPE) as process:
                assert process.stdout is not None
                if process.stdout.readline() != b"ready\n":
                    process.kill()
                    raise RuntimeError(f"child {k} did not start (exit status {process.wait()})")
                start = time.perf_counter()
                time.sleep(rng.uniform(args.min_run, args.max_run))
                process.send_signal(signal.SIGKILL)
                run.seconds = time.perf_counter() - start
                acks = process.stdout.read().split(b"\n")
            for ack in acks:
                parts = ack.split()
                if len(parts) == 3:  # a line cut by the kill is not an acknowledgement
                    run.last, run.resent, run.dropped = (int(p) for p in parts)
            out.runs.append(run)
        done = subprocess.run(
            [sys.executable, __file__, "--final", collector.url, str(folder)],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        )
        out.final = json.loads(done.stdout.splitlines()[-1])
    with output.open(encoding="utf-8") as lines:
        for line in lines:
            out.received[json.loads(json.loads(line)["parameters"])["id"]] += 1
    return out


def rows_for(mode: str, out: Outcome) -> tuple[list[Row], str]:
    received = out.received
    acked = sum(r.acknowledged for r in out.runs)
    lost = sum(
        1
        for r in out.runs
        if r.last is not None
        for i in range(r.base, r.last + 1)
        if i not in received
    )
    last = {r.base // ID_STRIDE: -1 if r.last is None else r.last for r in out.runs}
    unacked = sum(1 for i in received if last.get(i // ID_STRIDE, -1) < i)
    duplicates = sum(received.values()) - len(received)
    resent_runs = sum(r.resent for r in out.runs)
    dropped = sum(r.dropped for r in out.runs)
    seconds = sum(r.seconds for r in out.runs)
    pct = lost / acked * 100 if acked else 0.0
    rows = [
        Row(f"-- {mode}: {len(out.runs)} kills", ""),
        Row("  producer rate (acknowledged / time from ready to kill)", rate(acked / seconds)),
        Row("  acknowledged", f"{acked:,}"),
        # Both modes promise none: an acknowledged event is in the journal
        # file, which outlives the process (durable=True adds an msync per
        # event, against a power cut, which a kill is not).
        Row("  lost (acknowledged, never received)", f"{lost:,} ({pct:.2f}%)", "0", lost == 0),
        Row("  of those, counted as dropped by the children", f"{dropped:,}"),
        Row("  received, logged after the last acknowledgement", f"{unacked:,}"),
        Row(
            "  distinct ids received / events received",
            f"{len(received):,} / {sum(received.values()):,}",
        ),
        Row("  duplicates received", f"{duplicates:,}"),
        Row(
            "  resent counted: killed children (at last ack) + final",
            f"{resent_runs:,} + {out.final['resent']:,} = {resent_runs + out.final['resent']:,}",
            ">= duplicates",
            resent_runs + out.final["resent"] >= duplicates,
        ),
        Row(
            "  final process: sent / pending after its flush",
            f"{out.final['sent']:,} / {out.final['pending']:,}",
        ),
    ]
    return rows, f"{mode}: lost {lost:,} / acknowledged {acked:,} = {pct:.2f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--rate", type=float, default=19_000, help="events/s each child logs")
    parser.add_argument("--ack-every", type=int, default=100, help="events per acknowledgement")
    parser.add_argument("--min-run", type=float, default=0.2, help="seconds before a kill, least")
    parser.add_argument("--max-run", type=float, default=1.4, help="seconds before a kill, most")
    parser.add_argument("--modes", default="default,durable", help="default, durable or both")
    parser.add_argument("--seed", type=int, default=None, help="for the kill moments")
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--final", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        url, folder, base, mode, target, ack_every = args.child
        child(url, folder, int(base), mode == "durable", float(target), int(ack_every))
        return
    if args.final:
        final(*args.final)
        return
    if args.quick:
        args.kills = 3
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)

    rows: list[Row] = []
    summary: list[str] = []
    load_before = load()
    with tempfile.TemporaryDirectory(prefix="hamustro-bench-") as name:
        for mode in (m.strip() for m in args.modes.split(",")):
            mode_rows, text = rows_for(mode, kill_loop(args, Path(name), mode == "durable", rng))
            rows += mode_rows
            summary.append(text)
    rows.append(Row("load after", load()))
    print_table(
        f"kill loop: SIGKILL at a random moment {args.min_run:g}-{args.max_run:g} s into each "
        f"run, {args.rate:,.0f} ev/s asked, ack every {args.ack_every} events, seed {seed}; "
        f"{load_before}",
        rows,
    )
    for text in summary:
        print(f"  {text}")


if __name__ == "__main__":
    main()
