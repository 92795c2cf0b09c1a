"""``hamustro-logging retry-rejected``: move the events the collector refused back to pending.

Opens the folder to change it (``_open_queue``) and calls
:meth:`~hamustro_logging.queue.Queue.retry_rejected`.

Who calls what: :func:`hamustro_logging.cli.main` calls :func:`run` on the
main thread, and ``build_parser`` calls :func:`add_parser`; the options,
errors and output it shares with the other commands are ``_common``'s.
"""

from __future__ import annotations

import argparse

from ._common import (
    AddCommand,
    _add_queue_options,
    _open_queue,
    _queue_dir,
)

#: The command this module runs.
NAME = "retry-rejected"


def run(args: argparse.Namespace) -> int:
    """Move the rejected events back to pending; say how many."""
    directory = _queue_dir(args.queue_dir, args.client_id)
    with _open_queue(directory) as queue:
        moved = queue.retry_rejected()
    print(f"moved {moved} rejected events back to pending")
    return 0


def add_parser(add: AddCommand) -> None:
    """Add ``retry-rejected`` and its options to the parser (``build_parser`` calls it)."""
    retry = add(
        "retry-rejected",
        "move the rejected events back to pending",
        "Move every event the collector refused with 400 back to pending, to be sent again.",
    )
    _add_queue_options(retry)
