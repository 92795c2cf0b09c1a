"""The development collector's command line: ``python -m hamustro_logging.collector``.

:func:`main` parses the options, runs a :class:`.server.DevCollector` until
SIGINT or SIGTERM and stops it. ``hamustro-logging collector`` (the CLI)
and ``collector/__main__.py`` call it.

Which thread calls what: the main thread runs :func:`main`; the signal
handler only sets a flag, which the main thread polls.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from types import FrameType
from typing import TextIO

from .server import TRACK_PATH, DevCollector


def main(argv: list[str] | None = None) -> int:
    """Run the development collector until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m hamustro_logging.collector",
        description="Local Hamustro collector for development and tests (not for production). "
        "Prints every accepted event as one JSON line.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8080, help="port to bind; 0 picks a free one (default 8080)"
    )
    parser.add_argument(
        "--secret",
        default=os.environ.get("HAMUSTRO_SHARED_SECRET_KEY") or "dev-secret",
        help="shared secret key (default: $HAMUSTRO_SHARED_SECRET_KEY, else dev-secret)",
    )
    parser.add_argument(
        "--schema",
        type=int,
        choices=(1, 2),
        default=1,
        help="the schema to speak: 1, or 2 as upstream's newest collector (default 1)",
    )
    parser.add_argument("--output", metavar="FILE", help="append events to FILE (default stdout)")
    parser.add_argument(
        "--verbose", action="store_true", help='log requests; {"error": ...} bodies on errors'
    )
    args = parser.parse_args(argv)

    output: TextIO = sys.stdout
    if args.output is not None:
        output = open(args.output, "a", encoding="utf-8")  # noqa: SIM115 -- closed in finally
    stop_requested = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop_requested
        stop_requested = True  # only a flag: no lock may be taken inside a signal handler

    collector = DevCollector(
        args.host, args.port, args.secret, output, args.verbose, False, schema=args.schema
    )
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            collector.start()
        except OSError as exc:
            print(
                f"hamustro dev collector: cannot listen on {args.host}:{args.port}: {exc}",
                file=sys.stderr,
            )
            return 1
        print(
            f"hamustro dev collector listening on {collector.url}{TRACK_PATH}",
            file=sys.stderr,
            flush=True,
        )
        while not stop_requested:
            time.sleep(0.1)
        return 0
    finally:
        collector.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if output is not sys.stdout:
            output.close()
