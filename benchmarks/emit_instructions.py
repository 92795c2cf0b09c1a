"""Instructions per logged event, counted by callgrind: the emit cost without the machine's drift.

    python benchmarks/emit_instructions.py [--events 10000] [--handlers floor,agent,...] [--quick]

Wall and CPU times on a shared machine move by a fifth from one second to
the next (see ``emit_cost.py``'s rounds); the instructions a loop executes
do not. For each handler a child process logs the same
``log.info("order placed", extra={...})`` as ``emit_cost.py``, under
valgrind's callgrind, twice: ``--events`` events and three times as many
(after the same warm-up). The difference of the two totals divided by the
difference of the events is what one more ``log.info`` costs in
instructions: the interpreter's start, the imports and the warm-up cancel
out.

Only handlers with no thread of their own are counted (a thread's share
would depend on how the threads were scheduled):

* ``floor``: the stdlib ``QueueHandler`` into a bounded queue nobody reads
  (``emit_cost.py``'s floor);
* ``agent``: ``HamustroHandler(sender="agent")``: what the app's process
  executes with the agent as its sender (no agent runs here: the events
  stay in the journal, which is the app's whole share);
* ``agent-schema2``: the same with ``schema=2`` and a str ``user_id``.

What it does not count: the kernel's work (the page faults of the
journal's memory map, a few per hundred events) and how fast each
instruction runs (caches): ``emit_cost.py`` measures the time. Needs
``valgrind`` (``apt install valgrind``); without it, says so and counts
nothing. About a minute a handler at the default size.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import EXTRA

KEYS = {"floor": "floor", "agent": "agent", "agent-schema2": "agent"}
NAMES = {
    "floor": "stdlib QueueHandler (bounded, unread)",
    "agent": "HamustroHandler (sender=agent)",
    "agent-schema2": "HamustroHandler (sender=agent, schema=2)",
}
WARMUP = 2_000


def child(key: str, events: int) -> None:
    """Build handler ``key`` as ``emit_cost.py`` does, warm it up, log ``events`` events."""
    from emit_cost import HAMUSTRO_OPTIONS, setup

    folder = Path(tempfile.mkdtemp(prefix="hamustro-ir-"))
    if key == "agent-schema2":
        HAMUSTRO_OPTIONS["agent"] = {"sender": "agent", "schema": 2, "env": "production"}
    s = setup(KEYS[key], "http://127.0.0.1:9/", folder, 0)
    log: logging.Logger = s.log
    extra = EXTRA | {"user_id": "7"} if key == "agent-schema2" else EXTRA
    for _ in range(WARMUP + events):
        log.info("order placed", extra=extra)
    shutil.rmtree(folder, ignore_errors=True)
    os._exit(0)  # (no close(): its work is not the loop's)


def instructions(key: str, events: int, tmp: Path) -> int:
    """The instructions callgrind counted for a child logging ``events`` events."""
    out = tmp / f"{key}-{events}.callgrind"
    command = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
        sys.executable, __file__, "--child", key, str(events),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode or found is None:
        raise RuntimeError(f"{key}: callgrind failed:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--handlers", default=",".join(KEYS), help=f"among {', '.join(KEYS)}")
    parser.add_argument("--quick", action="store_true", help="2,000 events: a smoke run")
    parser.add_argument("--child", nargs=2, metavar=("KEY", "EVENTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    named = [k.strip() for k in args.handlers.split(",")]
    keys = ["floor", *(k for k in named if k not in ("", "floor"))]
    unknown = [k for k in keys if k not in KEYS]
    if unknown:
        parser.error(f"unknown handler key(s): {', '.join(unknown)}")
    if shutil.which("valgrind") is None:
        print("skipped: valgrind is not installed (apt install valgrind): nothing counted")
        return
    low = 2_000 if args.quick else args.events
    high = 3 * low
    print(f"instructions per log.info, callgrind, ({high:,} events - {low:,}) / {high - low:,}:")
    floor = 0.0
    with tempfile.TemporaryDirectory(prefix="hamustro-ir-") as name:
        for key in keys:
            counted = instructions(key, high, Path(name)) - instructions(key, low, Path(name))
            per_event = counted / (high - low)
            floor = floor or per_event
            print(f"  {NAMES[key]:<42} {per_event:>10,.0f}  {per_event / floor:.3f}x", flush=True)


if __name__ == "__main__":
    main()
