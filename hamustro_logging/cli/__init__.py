"""The ``hamustro-logging`` command: look into a queue folder, send it, test a collector.

Subcommands (each has ``--help``), one module each:

``status`` (:mod:`.status`)
    Per session: pending, leased and rejected events, the age of the oldest
    pending event and the last ``nr``; for the folder: the last sync, bytes
    on disk and pending bytes. A table, or one JSON document with ``--json``;
    ``--check``: one line and exit 0 OK, 1 WARNING, 2 CRITICAL (the rules are
    :mod:`hamustro_logging.health`'s); ``--prometheus``: the Prometheus text.
``flush`` (:mod:`.flush`)
    Send everything pending in the folder that is bound to the given collector
    and key (every session, each with its own stored header), with a progress
    bar on a terminal; exit 0 if nothing is left.
``agent`` (:mod:`.agent`)
    Move every app's journal in and send, until SIGTERM or SIGINT.
``send-test`` (:mod:`.send_test`)
    Send one test event straight to the collector (not through the queue)
    and say in plain words what the answer means; first find out which
    schema the collector speaks, and say so if it is not the configured one.
``export`` (:mod:`.export`)
    Print every pending (or, with ``--rejected``, rejected) event as one JSON
    line; a schema-2 line has ``"schema": 2``, its parameters as a JSON
    object and its env by name.
``retry-rejected`` (:mod:`.retry_rejected`)
    Move the events the collector refused with 400 back to pending.
``rebind`` (:mod:`.rebind`)
    Bind every event in the folder to the collector and key given.
``collector``
    Run the local development collector (``python -m hamustro_logging.collector``);
    the rest of the command line goes to its own parser.

``status``, ``export`` and ``retry-rejected`` take the folder (``--queue-dir``)
or the ``client_id`` whose default folder to use (``--client-id``). ``flush``
takes the folder, the collector's URL and the secret (and ``--timeout``,
``--headers``); ``send-test`` the tracker's configuration. Every option falls back
to the ``HAMUSTRO_<NAME>`` environment variable. The command never creates a
queue folder, and it never prints the shared secret.

``status`` and ``export`` only read: they open the folder through
:class:`~hamustro_logging.reader.QueueReader`, which writes nothing (a
read-only mount is fine) and refuses a folder that is not a hamustro queue.
``flush`` and ``retry-rejected`` check the same before they open the folder
for writing. A password in ``collector_url`` is never printed.

Exit codes: 0 success, 1 the operation failed or left something unsent, 2 a
usage or configuration error. The CLI holds no business logic of its own: it
calls :class:`~hamustro_logging.queue.Queue`,
:class:`~hamustro_logging.delivery.Delivery`,
:class:`~hamustro_logging.reader.QueueReader` and
:class:`~hamustro_logging.transport.Transport`.

Who calls what: the console script ``hamustro-logging`` and ``python -m
hamustro_logging`` call :func:`main`, on the process's main thread. It
builds the parser (each command module's ``add_parser`` adds its command),
runs the command module's ``run(args)``, and turns :class:`UsageError`
(2) and :class:`Failure` (1) into one line on stderr and the exit code.
The options, the output and the exit codes every command shares are in
:mod:`._common`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable

from .. import collector
from .._version import __version__
from . import agent, export, flush, rebind, retry_rejected, send_test, status
from ._common import _EPILOG, PROG, Failure, UsageError, _error, _plural

# Names the module had before it became a package, still importable from it.
from ._common import PREFIX as PREFIX
from .flush import PROGRESS_MIN_EVENTS as PROGRESS_MIN_EVENTS
from .status import SessionStatus as SessionStatus

__all__ = ["build_parser", "main"]


def _unrecognized(rest: list[str]) -> str:
    """Arguments a command does not take, for its usage error: options by name, no values.

    A value given to a command that does not take its option may be the
    secret (``status --shared-secret-key KEY``), so none is repeated.

    >>> _unrecognized(["--bogus"]), _unrecognized(["--shared-secret-key", "k", "--headers={}"])
    ('--bogus', '--shared-secret-key --headers (and 1 value, not shown)')
    """

    def is_option(arg: str) -> bool:  # --name or -x: a value may start with "-" too
        return arg.startswith("--") or (len(arg) == 2 and arg.startswith("-"))

    options = [arg.split("=", 1)[0] for arg in rest if is_option(arg)]
    values = len(rest) - len(options)
    shown = " ".join(options)
    if values:
        count = _plural(values, "value")
        shown += f" (and {count}, not shown)" if options else f"{count}, not shown"
    return shown


def build_parser() -> argparse.ArgumentParser:
    """The ``hamustro-logging`` argument parser: each command module adds its own."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Look into a hamustro-logging queue folder, send it, test a collector.",
        epilog=_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=description, epilog=_EPILOG)

    for module in _COMMANDS:
        module.add_parser(add)
    # Everything after `collector` goes to the collector's own parser, --help included.
    sub.add_parser(
        "collector",
        help="run the local development collector (see `collector --help`)",
        add_help=False,
    )
    return parser


def _run_collector(argv: list[str]) -> int:
    """The development collector's own ``main``; a bad port or output file is one line."""
    try:
        return collector.main(argv)
    except (OSError, OverflowError) as exc:  # --port 99999 overflows; --output /nonexistent/x
        raise Failure(f"collector: cannot start: {exc}") from None


#: Every command of our own, in the order ``--help`` lists them (``collector`` last, apart).
_COMMANDS = (status, flush, agent, send_test, export, retry_rejected, rebind)
#: A command's name -> its module's ``run``.
_RUN: dict[str, Callable[[argparse.Namespace], int]] = {m.NAME: m.run for m in _COMMANDS}


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    return code if isinstance(code, int) else 2


def main(argv: list[str] | None = None) -> int:
    """Run ``hamustro-logging`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
        if args.command is None:
            parser.print_usage(sys.stderr)
            _error("say which command; see --help")
            return 2
        if args.command == "collector":
            return _run_collector(rest)
        if rest:
            parser.error(f"unrecognized arguments: {_unrecognized(rest)}")
        return _RUN[args.command](args)
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        return _exit_code(exc)
    except UsageError as exc:
        _error(str(exc))
        return 2
    except Failure as exc:
        _error(str(exc))
        return 1
    except KeyboardInterrupt:
        _error("interrupted; whatever was not sent stays in the queue")
        return 130
    except BrokenPipeError:
        # `export | head`: the reader is gone. Silence the flush at exit too.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 1
