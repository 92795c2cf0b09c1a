"""``hamustro-logging rebind``: bind every event in the folder to another collector and key.

Opens the folder to change it (``_open_queue``) and calls
:meth:`~hamustro_logging.queue.Queue.rebind` with the new destination
(:func:`~hamustro_logging.tracker.destination_id`).

Who calls what: :func:`hamustro_logging.cli.main` calls :func:`run` on the
main thread, and ``build_parser`` calls :func:`add_parser`; the options,
errors and output it shares with the other commands are ``_common``'s.
"""

from __future__ import annotations

import argparse
import json
import os

from ..tracker import destination_id
from ..transport import track_url
from ._common import (
    AddCommand,
    UsageError,
    _add_queue_options,
    _check_url,
    _headers,
    _open_queue,
    _plural,
    _queue_dir,
    _shown_url,
)

#: The command this module runs.
NAME = "rebind"


def run(args: argparse.Namespace) -> int:
    """Bind every event in the folder to the destination given; say how many."""
    url = args.collector_url or os.environ.get("HAMUSTRO_COLLECTOR_URL")
    secret = os.environ.get("HAMUSTRO_SHARED_SECRET_KEY")
    secret = args.shared_secret_key or secret
    if not url or not secret:
        raise UsageError(
            "rebind needs the collector the events should go to: --collector-url "
            "[$HAMUSTRO_COLLECTOR_URL] and --shared-secret-key [$HAMUSTRO_SHARED_SECRET_KEY]"
        )
    _check_url(url)
    headers_text = args.headers or os.environ.get("HAMUSTRO_HEADERS")
    try:
        headers = _headers({"headers": headers_text}) if headers_text else None
    except json.JSONDecodeError as exc:  # its message has a position, never the text
        raise UsageError(f"--headers (or HAMUSTRO_HEADERS) is not a JSON object ({exc})") from None
    except (TypeError, ValueError) as exc:  # check_headers never shows a value
        raise UsageError(str(exc)) from None
    directory = _queue_dir(args.queue_dir, args.client_id, url)
    with _open_queue(directory) as queue:
        moved = queue.rebind(destination_id(url, secret, headers))
    print(f"{_plural(moved, 'event')} now bound to {_shown_url(track_url(url))}")
    return 0


def add_parser(add: AddCommand) -> None:
    """Add ``rebind`` and its options to the parser (``build_parser`` calls it)."""
    rebind = add(
        "rebind",
        "send the events kept for another collector or key to this one",
        "Events are kept for the collector and key they were logged for, and only a sender "
        "configured for those sends them. After a key rotation, or when the collector moved, "
        "bind every event in the folder to the collector and key given here instead (they are "
        "sent by the next flush or the running app).",
    )
    _add_queue_options(rebind)
    rebind.add_argument(
        "--collector-url", metavar="URL", help="the collector's base URL [$HAMUSTRO_COLLECTOR_URL]"
    )
    rebind.add_argument(
        "--shared-secret-key",
        metavar="KEY",
        help="its shared secret key [$HAMUSTRO_SHARED_SECRET_KEY]; better set in the environment",
    )
    rebind.add_argument(
        "--headers",
        metavar="JSON",
        help="the extra HTTP headers the app sends, a JSON object [$HAMUSTRO_HEADERS]: part of "
        "the destination, like the key; better set in the environment",
    )
