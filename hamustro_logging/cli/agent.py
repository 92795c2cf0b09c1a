"""``hamustro-logging agent``: move and send a folder's events until SIGTERM or SIGINT.

Builds the queue, the transport and the delivery, and hands them to
:func:`hamustro_logging.agent.run`, which holds the loop; it says on stderr
what happens (``_say``).

Who calls what: :func:`hamustro_logging.cli.main` calls :func:`run` on the
main thread, and ``build_parser`` calls :func:`add_parser`; the options,
errors and output it shares with the other commands are ``_common``'s.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import agent
from ..delivery import Delivery
from ..queue import Queue
from ..report import Reporter
from ..stats import Stats
from ..tracker import accepted_destinations
from ..transport import Transport
from ._common import (
    _FLUSH_SETTINGS,
    _QUEUE_ERRORS,
    PREFIX,
    AddCommand,
    Failure,
    UsageError,
    _add_config_options,
    _config,
    _headers,
    _open_queue,
    _queue_dir,
    _timeout,
)

#: The command this module runs.
NAME = "agent"


def run(args: argparse.Namespace) -> int:
    """Move every journal of the folder into its store and send, until SIGTERM or SIGINT."""
    if not 0 <= args.nice <= 19:
        raise UsageError(f"--nice must be 0 to 19, got {args.nice}")
    # Below the apps it serves: on a busy host they get the CPU first, and
    # their events wait in the folder meanwhile (the journal holds them).
    os.nice(args.nice)
    config = _config(args, _FLUSH_SETTINGS)
    url, secret = config["collector_url"], config["shared_secret_key"]
    directory = _queue_dir(config.get("queue_dir"), config.get("client_id"), url)
    reporter = Reporter()
    if not (directory / "cache.db").exists():  # an agent may start before the first app
        try:
            Queue(directory, notify=reporter.once).close()
        except _QUEUE_ERRORS as exc:
            raise Failure(f"cannot make the queue in {directory}: {exc}") from None
    transport = Transport(url, secret, timeout=_timeout(config), headers=_headers(config))
    try:
        with _open_queue(directory, notify=reporter.once) as queue:
            accepted = accepted_destinations(url, secret, _headers(config))
            delivery = Delivery(lambda: queue, transport, reporter, Stats(), destination=accepted)
            left = agent.run(
                queue, delivery, reporter, _say,
                interval=args.interval, stop_timeout=args.stop_timeout,
            )  # fmt: skip
    finally:
        transport.close()
    return 0 if left == 0 else 1


def _say(line: str) -> None:
    print(PREFIX + line, file=sys.stderr, flush=True)


def add_parser(add: AddCommand) -> None:
    """Add ``agent`` and its options to the parser (``build_parser`` calls it)."""
    agent_cmd = add(
        "agent",
        "move and send the folder's events until stopped (for systemd and sidecars)",
        "Run in the foreground: move the journals of every app writing to the queue folder "
        "(apps with sender='agent' start no thread of their own) into the folder's store and "
        "send the events bound to this collector and key, with the handler's retry rules. "
        "SIGTERM or SIGINT stops it within --stop-timeout seconds (plus a request in flight); "
        "what is not sent stays in the folder. Says on stderr when it starts, when delivery "
        "fails and recovers, and what it left; exits 0 if it left nothing.",
    )
    _add_config_options(agent_cmd, _FLUSH_SETTINGS)
    agent_cmd.add_argument(
        "--interval", type=float, default=0.2, metavar="SECONDS",
        help="pause between two looks at the folder (default 0.2)",
    )  # fmt: skip
    agent_cmd.add_argument(
        "--nice", type=int, default=10, metavar="N",
        help="lower the agent's CPU priority by N (0-19; default 10): the apps it serves come "
        "first on a busy host",
    )  # fmt: skip
    agent_cmd.add_argument(
        "--stop-timeout", type=float, default=10.0, metavar="SECONDS",
        help="time for the last move and send after a stop signal (default 10)",
    )  # fmt: skip
