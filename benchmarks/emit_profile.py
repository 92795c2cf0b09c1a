"""Where the default handler's cost goes: emit_cost.py's loop, sampled on every thread.

    python benchmarks/emit_profile.py [--events 200000] [--rate 500] [--handler default]
                                      [--keep PATH]

Runs emit_cost.py's child for one handler (``default`` unless ``--handler``
names another emit_cost.py key), delivering to a local collector, and
samples it with py-spy (the ``bench`` extra) from the loop's first call
until the collector had every event of the loop (the tail sent by
``flush()``): the same span as emit_cost.py's CPU figure. py-spy reads the
process from outside, so it sees every thread, and it takes no GIL; cProfile
would see only the thread it runs in, and the handler's work happens
mostly on its own threads.

Each thread's CPU time over that span is measured exactly (the child reads
its threads' CPU clocks, ``pthread_getcpuclockid``); py-spy's samples split
it. Only samples in which the thread holds the GIL count (py-spy
``--gil``): a sample of a thread waiting for the GIL, which the OS may show
as running, says nothing of where its CPU goes. Each sample goes to a
thread (the app's loop, the handler's spool thread, its send thread, ...)
and to a category by the innermost frame that belongs to a known module: the
stdlib ``logging`` machinery (``Logger.info``, ``LogRecord``), the mapping
(``mapping.py``), encoding (``wire.py``, protobuf), the store (``queue.py``,
``store/`` and their helpers, diskcache, SQLite), the journal, delivery
(``delivery.py``, ``retry.py``), HTTP (``transport.py``, requests, urllib3,
``http.client``, sockets), the handler's threads (``flusher.py``), and so
on; a module of the package not named here is shown by its own name. A thread's CPU per
event is then split by its samples' categories. Work a thread does with the
GIL released (SQLite's C code, a socket's send) has no sample of its own and
is spread over that thread's categories by their shares: the store's and
HTTP's figures are lower bounds. On a machine whose cores are all busy a
thread also holds the GIL while the OS has it wait for a core, so the GIL
time (printed) exceeds the CPU time; the split within a thread holds.

Sampling slows the process a little (py-spy stops it for each sample), so
the loop's wall time here is not emit_cost.py's figure: read the shares.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import Collector, load

HERE = Path(__file__).resolve().parent

#: Innermost-first: the first frame whose file contains one of these decides the category.
RULES: list[tuple[str, str]] = [
    ("/benchmarks/emit_cost.py", "the benchmark's loop itself"),
    ("hamustro_logging/mapping.py", "mapping (record -> event)"),
    ("hamustro_logging/contextfields.py", "mapping (record -> event)"),
    ("hamustro_logging/wire.py", "encoding (protobuf frames)"),
    ("hamustro_logging/payload", "encoding (protobuf frames)"),
    ("google/protobuf/", "encoding (protobuf frames)"),
    ("journal", "journal"),
    ("hamustro_logging/queue.py", "store (SQLite: append, claim, settle)"),
    ("hamustro_logging/store/", "store (SQLite: append, claim, settle)"),
    ("hamustro_logging/reader.py", "store (SQLite: append, claim, settle)"),
    ("hamustro_logging/owners.py", "store (SQLite: append, claim, settle)"),
    ("hamustro_logging/salvage.py", "store (SQLite: append, claim, settle)"),
    ("hamustro_logging/folder.py", "store (SQLite: append, claim, settle)"),
    ("/diskcache/", "store (SQLite: append, claim, settle)"),
    ("/sqlite3/", "store (SQLite: append, claim, settle)"),
    ("hamustro_logging/transport.py", "HTTP (transport, requests, urllib3, sockets)"),
    ("/requests/", "HTTP (transport, requests, urllib3, sockets)"),
    ("/urllib3/", "HTTP (transport, requests, urllib3, sockets)"),
    ("/http/client.py", "HTTP (transport, requests, urllib3, sockets)"),
    ("/email/", "HTTP (transport, requests, urllib3, sockets)"),
    ("/socket.py", "HTTP (transport, requests, urllib3, sockets)"),
    ("/ssl.py", "HTTP (transport, requests, urllib3, sockets)"),
    ("hamustro_logging/delivery.py", "delivery (batches, retry rules, counters)"),
    ("hamustro_logging/retry.py", "delivery (batches, retry rules, counters)"),
    ("hamustro_logging/stats.py", "delivery (batches, retry rules, counters)"),
    ("hamustro_logging/tracker/", "tracker (session, numbering, triggers)"),
    ("hamustro_logging/handler.py", "handler.emit (filter, hand-over)"),
    ("hamustro_logging/flusher.py", "flusher (buffer, wake-ups, thread loops)"),
    ("hamustro_logging/intake.py", "flusher (buffer, wake-ups, thread loops)"),
    ("hamustro_logging/sender.py", "flusher (buffer, wake-ups, thread loops)"),
    ("hamustro_logging/ranges.py", "flusher (buffer, wake-ups, thread loops)"),
    ("/logging/__init__.py", "stdlib logging (Logger.info, LogRecord)"),
    ("/logging/handlers.py", "stdlib logging (Logger.info, LogRecord)"),
]
OTHER = "other (interpreter, threading, GC...)"
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*)\)$")


def category(frames: list[str]) -> str:
    """The category of one stack (outermost first): its innermost frame with a rule."""
    for frame in reversed(frames):
        match = _FRAME.match(frame)
        file = match["file"] if match else frame
        for needle, name in RULES:
            if needle in file:
                return name
        if "hamustro_logging/" in file:  # a module of the package without a rule of its own
            return "hamustro_logging/" + file.rsplit("hamustro_logging/", 1)[1]
    return OTHER


def thread_role(label: str) -> str:
    """``thread (123): hamustro-7f3a-spool`` -> ``spool``; the main thread -> ``app``."""
    name = label.partition(": ")[2]
    if name in ("", "MainThread"):
        return "app"
    return re.sub(r"^hamustro-[0-9a-f]+-", "", name)


def parse(raw: str) -> collections.Counter[tuple[str, str]]:
    """py-spy's raw output -> samples by (thread role, category).

    A line is ``thread (tid): name;frame;...;frame count``, outermost frame first.
    """
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for line in raw.splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        parts = stack.split(";")
        role = thread_role(parts[0]) if parts[0].startswith("thread (") else "?"
        counts[role, category(parts[1:])] += int(number)
    return counts


def spy() -> str:
    """The py-spy command: next to this Python (a venv's bin) or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        sys.exit("emit_profile.py needs py-spy: pip install -e '.[bench]'")
    return found


def profile(args: argparse.Namespace, tmp: Path) -> tuple[str, dict[str, Any]]:
    """Run the child under py-spy; (py-spy's raw output, the child's figures)."""
    folder = tmp / "queue"
    raw = tmp / "profile.txt"
    spy_process: subprocess.Popen[str] | None = None
    with Collector(tmp / "events.jsonl", schema=2 if args.handler == "schema2" else 1) as peer:
        command = [
            sys.executable, str(HERE / "emit_cost.py"), "--child", args.handler, peer.url,
            str(folder), "0", "--events", str(args.events), "--calls", "0",
            "--warmup", str(args.warmup), "--hold",
        ]  # fmt: skip
        with subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        ) as child:
            assert child.stdin is not None and child.stdout is not None
            for line in child.stdout:
                word = line.strip()
                if word.startswith("await "):
                    peer.wait_lines(int(word.split()[1]), timeout=600)
                elif word == "ready":
                    spy_process = subprocess.Popen(
                        [
                            spy(), "record", "--pid", str(child.pid), "--rate", str(args.rate),
                            "--format", "raw", "--threads", "--full-filenames", "--nolineno",
                            "--gil", "--output", str(raw),
                        ],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                    )  # fmt: skip
                    assert spy_process.stdout is not None
                    started = spy_process.stdout.readline()  # "py-spy> Sampling process .."
                    if "Sampling" not in started:
                        child.kill()
                        sys.exit(f"py-spy did not start: {started.strip()}")
                elif word == "done":
                    assert spy_process is not None
                    spy_process.send_signal(signal.SIGINT)  # py-spy writes its file and ends
                    spy_process.communicate(timeout=60)
                elif word.startswith("{"):
                    figures: dict[str, Any] = json.loads(word)
                    break
                else:
                    continue
                child.stdin.write("ok\n")
                child.stdin.flush()
            else:
                sys.exit(f"the child ended without figures (exit {child.wait()})")
    if spy_process is None or not raw.exists():
        sys.exit("py-spy wrote no profile")
    return raw.read_text(encoding="utf-8"), figures


def report(
    counts: collections.Counter[tuple[str, str]], figures: dict[str, Any], args: Any
) -> None:
    """Each thread's measured CPU per event, split by its GIL samples' categories."""
    cpu: dict[str, float] = collections.defaultdict(float)
    for name, us in figures["thread_cpu_us"].items():
        cpu[thread_role("thread (0): " + name)] += us
    roles = sorted(cpu, key=lambda r: (r != "app", -cpu[r]))
    categories = list({c for _, c in counts})
    total = sum(counts.values())
    gil_us = total / args.rate / args.events * 1e6
    print(
        f"\nwhere {args.handler!r} spends its CPU: {args.events:,} events, from the loop's first "
        f"call until the collector had every event; py-spy --gil at {args.rate} Hz "
        f"({total:,} samples; {load()})"
    )
    print(
        f"  this run: loop {figures['loop_us']:.2f} us/event wall (slowed by sampling); "
        f"process CPU {figures['cpu_us']:.2f} us/event; GIL held {gil_us:.2f} us/event"
    )
    width = max(len(c) for c in [*categories, "category"])
    heads = " ".join(f"{r:>9}" for r in roles)
    print(f"\n  us of CPU per event\n  {'category':<{width}} {heads}       all  share")
    split = {
        (r, c): cpu[r] * _sum(counts, role=r, cat=c) / max(1, _sum(counts, role=r))
        for r in roles
        for c in categories
    }
    whole = sum(cpu.values())
    categories.sort(key=lambda c: -sum(split[r, c] for r in roles))
    for cat in categories:
        cells = [split[r, cat] for r in roles]
        row = " ".join(f"{c:>9.2f}" if c >= 0.005 else f"{'-':>9}" for c in cells)
        print(f"  {cat:<{width}} {row} {sum(cells):>9.2f} {sum(cells) / whole:>6.1%}")
    row = " ".join(f"{cpu[r]:>9.2f}" for r in roles)
    print(f"  {'the thread (measured)':<{width}} {row} {whole:>9.2f} {1:>6.1%}")
    print(
        "  the thread: its CPU time over the span (pthread_getcpuclockid), per event; split\n"
        "  by the categories of the samples in which it held the GIL (C code run with the\n"
        "  GIL released, SQLite's or a socket's, goes with the thread's other work). app:\n"
        "  the thread that logs; the others are the handler's threads, by name."
    )


def _sum(
    counts: collections.Counter[tuple[str, str]], role: str | None = None, cat: str | None = None
) -> int:
    return sum(
        n
        for (r, c), n in counts.items()
        if (role is None or r == role) and (cat is None or c == cat)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--rate", type=int, default=500, help="samples per second")
    parser.add_argument("--handler", default="default", help="an emit_cost.py key (default)")
    parser.add_argument("--keep", type=Path, metavar="PATH", help="keep py-spy's raw output here")
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.events, args.warmup = 20_000, 500
    spy()
    with tempfile.TemporaryDirectory(prefix="hamustro-bench-") as name:
        raw, figures = profile(args, Path(name))
    if args.keep:
        args.keep.write_text(raw, encoding="utf-8")
    report(parse(raw), figures, args)


if __name__ == "__main__":
    main()
