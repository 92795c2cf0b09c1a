"""``hamustro-logging export``: every pending, rejected or set-aside event as one JSON line.

Reads only (``_read_queue``); each stored event is decoded by
:func:`hamustro_logging.reader.event_record`.

Who calls what: :func:`hamustro_logging.cli.main` calls :func:`run` on the
main thread, and ``build_parser`` calls :func:`add_parser`; the options,
errors and output it shares with the other commands are ``_common``'s.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys

from google.protobuf.message import DecodeError

from ..reader import event_record
from ._common import (
    AddCommand,
    _add_queue_options,
    _error,
    _queue_dir,
    _read_queue,
)

#: The command this module runs.
NAME = "export"


def run(args: argparse.Namespace) -> int:
    """Print the events, one JSON line each; exit 1 if one could not be decoded."""
    directory = _queue_dir(args.queue_dir, args.client_id)
    broken = 0
    with _read_queue(directory) as queue:
        if args.aside:
            for key, raw in queue.iter_aside():
                doc = {"key": key, "bytes_base64": base64.b64encode(raw).decode("ascii")}
                sys.stdout.write(json.dumps(doc) + "\n")
            return 0
        for session, header, nr, frame in queue.iter_events(rejected=args.rejected):
            try:
                line = event_record(session, header, nr, frame)
            except (DecodeError, IndexError, ValueError) as exc:
                broken += 1
                _error(f"session {session} nr {nr}: cannot decode the stored event: {exc}")
                continue
            sys.stdout.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
    return 1 if broken else 0


def add_parser(add: AddCommand) -> None:
    """Add ``export`` and its options to the parser (``build_parser`` calls it)."""
    export = add(
        "export",
        "print every pending (or rejected) event as one JSON line",
        "Print every pending event (or, with --rejected, every event the collector refused "
        "with 400) as one JSON line, with its session, nr, payload and collection fields.",
    )
    _add_queue_options(export)
    which = export.add_mutually_exclusive_group()
    which.add_argument("--rejected", action="store_true", help="export the rejected events")
    which.add_argument(
        "--aside",
        action="store_true",
        help="export the rows set aside as unusable: their key and raw bytes (base64)",
    )
