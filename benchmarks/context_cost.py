"""What ``hamustro_logging.context()`` adds to ``emit``: a logging loop outside and inside one.

    python benchmarks/context_cost.py [--events 50000] [--rounds 5]

One ``HamustroHandler`` with ``sender="agent"`` and no agent running, so
the handler starts no thread and the loop measures ``emit`` alone (mapping,
encoding, the journal append); ``max_buffer`` is large enough that it never
waits. Each round runs, in turn:

* **no context**: ``log.info(..., extra={"event": ..., "user_id": 7,
  "params": {"total": 12}})``, the library's common path;
* **the same event, all in extra**: ``params={"plan": "pro", "total": 12}``
  in the call, no context: the event the context cases send, without one;
* **in a context**: the first call inside ``with context(user_id=7,
  params={"plan": "pro"})`` (the record's ``user_id`` wins, the params
  merge: ``{"plan": "pro", "total": 12}``);
* **nested contexts**: inside two, ``context(user_id=7)`` then
  ``context(params={"plan": "pro"})``: the same event as above.

Figures per case: the loop's wall time ÷ its events (mean over the rounds)
and the process's CPU time ÷ its events, with the spread of the rounds.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from _common import dead_url, make_handler, make_logger

from hamustro_logging import context

CASES: dict[str, Callable[[], AbstractContextManager[object]]] = {
    "no context": nullcontext,
    "all in extra": nullcontext,
    "in a context": lambda: context(user_id=7, params={"plan": "pro"}),
    "nested contexts": lambda: _nested(),
}


class _nested:
    def __enter__(self) -> None:
        self.outer, self.inner = context(user_id=7), context(params={"plan": "pro"})
        self.outer.__enter__()
        self.inner.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.inner.__exit__(None, None, None)
        self.outer.__exit__(None, None, None)


def run_loop(log: logging.Logger, events: int, case: str) -> tuple[float, float]:
    extra = {"event": "order_placed", "user_id": 7, "params": {"total": 12}}
    if case == "all in extra":
        extra["params"] = {"plan": "pro", "total": 12}
    with CASES[case]():
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(events):
            log.info("order placed", extra=extra)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall / events * 1e6, cpu / events * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hamustro-context-cost-") as tmp:
        handler = make_handler(
            dead_url(), Path(tmp), sender="agent", max_buffer=10**8, queue_size=10**9
        )
        log = make_logger("context_cost", handler)
        try:
            run_loop(log, args.events // 5, "in a context")  # warm-up
            figures: dict[str, list[tuple[float, float]]] = {case: [] for case in CASES}
            for _ in range(args.rounds):
                for case in CASES:
                    figures[case].append(run_loop(log, args.events, case))
        finally:
            log.removeHandler(handler)
            handler.close()
    print(f"{args.events} events a loop, {args.rounds} rounds; per event:")
    for case, rounds in figures.items():
        walls, cpus = [w for w, _ in rounds], [c for _, c in rounds]
        print(
            f"  {case:<16} loop {statistics.mean(walls):5.2f} µs "
            f"({min(walls):.2f}..{max(walls):.2f})   CPU {statistics.mean(cpus):5.2f} µs"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
