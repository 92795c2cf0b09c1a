"""Crash window: events ``emit`` acknowledged, against events delivered after a SIGKILL.

    python benchmarks/crash_window.py [--rates 1000,20000,max] [--kills 3] [--modes default]
                                      [--hogs 0] [--seed N] [--quick]

For each mode (default options; ``durable`` adds ``durable=True``) and each
producer rate, ``--kills`` times, on one folder per mode and rate, with a
``DevCollector`` on loopback in this process (its JSON lines written to a
file):

1. A child process opens a ``HamustroHandler`` on the folder (sending to
   the collector: its own threads deliver while it runs), says "ready", and
   logs in a paced loop at the rate (``max``: as fast as it can), each event
   carrying a unique id in its params. After each ``log.info`` returns it
   writes the count of calls returned into a small file through a shared
   memory map: those events are *acknowledged*, the app was told they are
   logged. (The map's pages belong to the file, so the count outlives the
   kill, as the journal does.)
2. The parent SIGKILLs it at a random moment ``--min-run`` to ``--max-run``
   seconds after "ready" (``--seed`` makes the moments repeatable), reads
   the count, and flushes the folder from this process with
   ``ClientTracker(...).flush()``, as the next start (or
   ``hamustro-logging flush``) would: it adopts the killed child's journal
   segments, moves them into the store and sends everything.
3. Once every (mode, rate) ran, the ids the collector received are
   compared with the acknowledged ones: *delivered* (acknowledged and
   received), *lost* (acknowledged, never received), *duplicates*
   (received more than once: a batch the child was sending when it was
   killed goes out again; the flush counts it in ``stats()["resent"]``),
   and the ids received beyond the count (the kill fell between an
   ``emit`` and the write of the count).

``--hogs N`` runs N busy-looping processes during each child's run (another
busy process on the machine). The child's drops (``stats()["dropped"]``,
written to the same map every 256 events) are shown too: an event dropped
with a reason is counted, never silently lost.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import mmap
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from _common import (
    IDS,
    SECRET,
    Row,
    dev_collector,
    load,
    make_logger,
    paced,
    print_table,
    rate,
)

from hamustro_logging import ClientTracker, HamustroHandler

#: Ids of kill ``k`` start at ``k * ID_STRIDE``: no run logs that many.
ID_STRIDE = 10**8
#: The acknowledgement file: u64 calls returned, u64 events the child dropped.
ACK = struct.Struct("<QQ")


def child(url: str, folder: str, ack_path: str, base: int, durable: bool, target: float) -> None:
    """Log ids ``base``, ``base + 1``, ... at ``target`` events/s until killed, acknowledging."""
    handler = HamustroHandler(
        collector_url=url, shared_secret_key=SECRET, queue_dir=folder, durable=durable, **IDS
    )
    info = make_logger("crash", handler).info
    counters = handler.tracker.stats_counters
    fd = os.open(ack_path, os.O_RDWR)
    ack = mmap.mmap(fd, ACK.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    os.close(fd)
    pack = ACK.pack_into
    os.write(1, b"ready\n")
    dropped = [0]

    def log_one(i: int) -> None:
        info(
            "order placed",
            extra={"event": "order_placed", "user_id": 7, "params": {"id": base + i}},
        )
        if i & 255 == 0:
            dropped[0] = sum(counters.dropped.values())
        pack(ack, 0, i + 1, dropped[0])  # acknowledged: log.info returned for 0..i

    paced(log_one, None if target <= 0 else target, math.inf, [0])


@dataclass
class Kill:
    base: int
    acknowledged: int = 0
    dropped: int = 0  # as last written by the child (every 256 events)
    seconds: float = 0.0  # from "ready" to the kill
    flush_seconds: float = 0.0  # the later ClientTracker.flush(), until nothing was left
    resent: int = 0  # counted by that flush: batches the killed child may have sent already


@dataclass
class Outcome:
    kills: list[Kill] = field(default_factory=list)
    received: collections.Counter[int] = field(default_factory=collections.Counter)


@contextlib.contextmanager
def hogs(n: int) -> Iterator[None]:
    """``n`` processes that keep a CPU busy meanwhile (ended by their own pid)."""
    procs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(n)
    ]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def flush_folder(url: str, folder: Path) -> tuple[float, int]:
    """Adopt the folder's journals and send everything, as the next start would.

    Returns the seconds it took and the events it counted as ``resent``.
    """
    started = time.perf_counter()
    with ClientTracker(url, SECRET, queue_dir=str(folder), detect_ip=False, **IDS) as tracker:
        deadline = time.monotonic() + 600
        while not tracker.flush(timeout=60):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{folder}: events still pending after 600 s of flushing")
            time.sleep(0.1)
        resent = int(tracker.stats()["resent"])
    return time.perf_counter() - started, resent


def run_rate(
    args: argparse.Namespace, tmp: Path, mode: str, target: float, rng: random.Random
) -> Outcome:
    name = f"{mode}-{'max' if target <= 0 else int(target)}"
    folder, output, ack_path = tmp / name, tmp / f"{name}.jsonl", tmp / f"{name}.ack"
    out = Outcome()
    with dev_collector(output) as collector:
        for k in range(args.kills):
            kill = Kill(base=k * ID_STRIDE)
            ack_path.write_bytes(bytes(ACK.size))
            command = [sys.executable, __file__, "--child", collector.url, str(folder)]
            command += [str(ack_path), str(kill.base), mode, str(target)]
            with hogs(args.hogs), subprocess.Popen(command, stdout=subprocess.PIPE) as process:
                assert process.stdout is not None
                if process.stdout.readline() != b"ready\n":
                    process.kill()
                    raise RuntimeError(f"child {k} did not start (exit status {process.wait()})")
                start = time.perf_counter()
                time.sleep(rng.uniform(args.min_run, args.max_run))
                process.send_signal(signal.SIGKILL)
                kill.seconds = time.perf_counter() - start
                process.wait()
            kill.acknowledged, kill.dropped = ACK.unpack(ack_path.read_bytes()[: ACK.size])
            kill.flush_seconds, kill.resent = flush_folder(collector.url, folder)
            out.kills.append(kill)
    with output.open(encoding="utf-8") as lines:
        for line in lines:
            out.received[json.loads(json.loads(line)["parameters"])["id"]] += 1
    return out


def rows_for(mode: str, target: float, out: Outcome) -> tuple[list[Row], str]:
    received = out.received
    acked = sum(k.acknowledged for k in out.kills)
    lost_per_kill = [
        sum(1 for i in range(k.base, k.base + k.acknowledged) if i not in received)
        for k in out.kills
    ]
    lost = sum(lost_per_kill)
    delivered = acked - lost
    ends = {k.base // ID_STRIDE: k.base + k.acknowledged for k in out.kills}
    beyond = sum(1 for i in received if i >= ends.get(i // ID_STRIDE, 0))
    duplicates = sum(received.values()) - len(received)
    dropped = sum(k.dropped for k in out.kills)
    resent = sum(k.resent for k in out.kills)
    seconds = sum(k.seconds for k in out.kills)
    wanted = "unthrottled" if target <= 0 else rate(target)
    rows = [
        Row(f"-- {mode}, {wanted}: {len(out.kills)} kills", ""),
        Row("  rate achieved (acknowledged / time from ready to kill)", rate(acked / seconds)),
        Row("  acknowledged (log.info returned)", f"{acked:,}"),
        Row("  delivered (acknowledged and received)", f"{delivered:,}"),
        Row("  lost (acknowledged, never received)", f"{lost:,}", "0", lost == 0),
        Row("  lost per kill", ", ".join(f"{n:,}" for n in lost_per_kill)),
        Row("  of the acknowledged, dropped with a reason by the child", f"{dropped:,}"),
        Row("  received beyond the acknowledged count (kill mid-call)", f"{beyond:,}"),
        Row("  duplicates received", f"{duplicates:,}"),
        Row(
            "  counted as resent by the later flush",
            f"{resent:,}",
            ">= duplicates",
            resent >= duplicates,
        ),
        Row(
            "  later flush (adopt + send), per kill",
            ", ".join(f"{k.flush_seconds:.1f} s" for k in out.kills),
        ),
    ]
    summary = (
        f"{mode}, {wanted}: acknowledged {acked:,}, delivered {delivered:,}, lost {lost:,}, "
        f"duplicates {duplicates:,} (resent counted {resent:,}), {len(out.kills)} kills"
    )
    return rows, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rates", default="1000,20000,max", help="events/s, comma-separated; max: unthrottled"
    )
    parser.add_argument("--kills", type=int, default=3, help="per mode and rate")
    parser.add_argument("--min-run", type=float, default=0.5, help="seconds before a kill, least")
    parser.add_argument("--max-run", type=float, default=2.0, help="seconds before a kill, most")
    parser.add_argument("--modes", default="default", help="default, durable, or both")
    parser.add_argument("--hogs", type=int, default=0, help="busy processes during each run")
    parser.add_argument("--seed", type=int, default=None, help="for the kill moments")
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        url, folder, ack_path, base, mode, target = args.child
        child(url, folder, ack_path, int(base), mode == "durable", float(target))
        return
    if args.quick:
        args.kills, args.min_run, args.max_run = 1, 0.2, 0.4
    targets = [0.0 if r.strip() == "max" else float(r) for r in args.rates.split(",")]
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)

    rows: list[Row] = []
    summary: list[str] = []
    load_before = load()
    with tempfile.TemporaryDirectory(prefix="hamustro-bench-") as name:
        for mode in (m.strip() for m in args.modes.split(",")):
            for target in targets:
                mode_rows, text = rows_for(
                    mode, target, run_rate(args, Path(name), mode, target, rng)
                )
                rows += mode_rows
                summary.append(text)
    rows.append(Row("load after", load()))
    print_table(
        f"crash window: SIGKILL {args.min_run:g}-{args.max_run:g} s into each run, then a "
        f"later flush; {args.hogs} CPU hogs; seed {seed}; {load_before}",
        rows,
    )
    for text in summary:
        print(f"  {text}")


if __name__ == "__main__":
    main()
