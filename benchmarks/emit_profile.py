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

Only samples of the thread holding the GIL count (py-spy ``--gil``): the
application's loop can only run while no other thread of its process holds
the GIL, so these shares are of what the loop competes for. Work done with
the GIL released (SQLite's C code, a socket's send) runs beside the loop on
another core and is not in them; the process's CPU per event
(``process_time``) is printed beside for that. Each sample goes to a thread
(the app's loop, the handler's spool thread, its send thread, ...) and to
a category by the innermost frame that belongs to a known module: the
stdlib ``logging`` machinery (``Logger.info``, ``LogRecord``), the mapping
(``mapping.py``), encoding (``wire.py``, protobuf), the store (``queue.py``
and its helpers, diskcache, SQLite), the journal, delivery (``delivery.py``,
``retry.py``), HTTP (``transport.py``, requests, urllib3, ``http.client``,
sockets), the handler's threads (``flusher.py``), and so on; a module of
the package not named here is shown by its own name. GIL µs per event are
the samples ÷ the rate ÷ the events: on a machine whose cores are all busy
a thread holds the GIL also while the OS has it wait for a core, so the
total is near the loop's wall time there, and the shares are what to read.

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
    ("hamustro_logging/wire.py", "encoding (protobuf frames)"),
    ("hamustro_logging/payload", "encoding (protobuf frames)"),
    ("google/protobuf/", "encoding (protobuf frames)"),
    ("journal", "journal"),
    ("hamustro_logging/queue.py", "store (SQLite: append, claim, settle)"),
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
    ("hamustro_logging/tracker.py", "tracker (session, numbering, triggers)"),
    ("hamustro_logging/handler.py", "handler.emit (filter, hand-over)"),
    ("hamustro_logging/flusher.py", "flusher (buffer, wake-ups, thread loops)"),
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
    total = sum(counts.values())
    roles = sorted({r for r, _ in counts}, key=lambda r: (r != "app", -_sum(counts, role=r)))
    categories = sorted({c for _, c in counts}, key=lambda c: -_sum(counts, cat=c))
    gil_us = total / args.rate / args.events * 1e6
    print(
        f"\nwhere {args.handler!r} spends the GIL: {args.events:,} events, py-spy --gil at "
        f"{args.rate} Hz ({total:,} samples), from the loop's first call until the collector "
        f"had every event ({load()})"
    )
    print(
        f"  this run: loop {figures['loop_us']:.2f} us/event wall (slowed by sampling); "
        f"CPU {figures['cpu_us']:.2f} us/event (process_time, all threads); "
        f"GIL held {gil_us:.2f} us/event"
    )
    width = max(len(c) for c in [*categories, "category"])
    heads = " ".join(f"{r:>9}" for r in roles)
    print(f"\n  {'category':<{width}} {heads}     all  GIL us/event")
    for cat in [*categories, None]:
        cells = [_sum(counts, role=r, cat=cat) / total for r in roles]
        share = _sum(counts, cat=cat) / total
        shares = " ".join(f"{c:>8.1%} " if c else f"{'-':>8} " for c in cells)
        print(f"  {cat or 'all':<{width}} {shares}{share:>7.1%} {share * gil_us:>10.2f}")
    print(
        "  shares of the samples in which a thread of the process held the GIL. app: the\n"
        "  thread that logs (the logging call, the mapping, the hand-over); the others are\n"
        "  the handler's threads, by name."
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
