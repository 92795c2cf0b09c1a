"""``hamustro-logging flush``: send the folder's pending events now, with a progress bar.

A :class:`~hamustro_logging.delivery.Delivery` of its own over the folder's
queue, after a :class:`~hamustro_logging.spool.Spool` moved in the
journals no live process moves. The progress bar (``_Progress``) is
redrawn from a thread of its own that only reads the pending count.

Who calls what: :func:`hamustro_logging.cli.main` calls :func:`run` on the
main thread, and ``build_parser`` calls :func:`add_parser`; the options,
errors and output it shares with the other commands are ``_common``'s.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
from typing import TextIO

from ..delivery import Delivery
from ..queue import Queue
from ..report import Reporter
from ..spool import Spool
from ..stats import Stats
from ..tracker import accepted_destinations
from ..transport import Transport
from ._common import (
    _FLUSH_SETTINGS,
    _QUEUE_ERRORS,
    AddCommand,
    _add_config_options,
    _config,
    _error,
    _headers,
    _open_queue,
    _plural,
    _queue_dir,
    _timeout,
)

#: A progress bar is worth drawing only when flushing takes a while.
PROGRESS_MIN_EVENTS = 1000

#: The command this module runs.
NAME = "flush"


def _bar(done: int, total: int, width: int = 30) -> str:
    """One frame of the progress bar, starting with ``\\r``.

    >>> _bar(500, 2000, width=10)
    '\\rsending [##--------] 500/2000 25%'
    """
    done = min(total, max(0, done))
    filled = width * done // total if total else width
    percent = 100 * done // total if total else 100
    return f"\rsending [{'#' * filled}{'-' * (width - filled)}] {done}/{total} {percent}%"


class _Progress:
    """A plain ``\\r`` progress bar on ``stream``, redrawn from a polling thread.

    The thread only reads ``queue.pending_count()`` (a ``Queue`` may be used
    from several threads; this one closes its own connection when done).
    """

    def __init__(self, stream: TextIO, queue: Queue, total: int, width: int = 30) -> None:
        self.stream = stream
        self.queue = queue
        self.total = total
        self.width = width
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hamustro-cli-progress", daemon=True)

    def _draw(self, left: int) -> None:
        with contextlib.suppress(OSError, ValueError):  # a closed terminal
            self.stream.write(_bar(self.total - left, self.total, self.width))
            self.stream.flush()

    def _run(self) -> None:
        try:
            while not self._stop.wait(0.2):
                self._draw(self.queue.pending_count())
        except _QUEUE_ERRORS:
            pass  # only the bar stops; the flush reports its own errors
        finally:
            self.queue.close()  # this thread's connection

    def __enter__(self) -> _Progress:
        self._draw(self.total)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(*_QUEUE_ERRORS):
            self._draw(self.queue.pending_count())
        with contextlib.suppress(OSError, ValueError):
            self.stream.write("\n")
            self.stream.flush()


def run(args: argparse.Namespace) -> int:
    """Send the folder's events bound to this collector and key, each with its stored header.

    A :class:`~hamustro_logging.delivery.Delivery` of its own over the folder's
    queue, not a ``ClientTracker``: a tracker is an identity (a session, a
    header registered in the folder), and flushing needs none.
    """
    config = _config(args, _FLUSH_SETTINGS)
    timeout = _timeout(config)
    url, secret = config["collector_url"], config["shared_secret_key"]
    directory = _queue_dir(config.get("queue_dir"), config.get("client_id"), url)
    reporter = Reporter()
    transport = Transport(url, secret, timeout=timeout, headers=_headers(config))
    sent = failed = 0
    try:
        with _open_queue(directory, notify=reporter.once) as queue:
            destinations = accepted_destinations(url, secret, _headers(config))
            delivery = Delivery(
                lambda: queue, transport, reporter, Stats(), destination=destinations
            )
            delivery.one_shot = True
            # Journals no live process moves (apps that ended or were killed,
            # apps with sender="agent") are moved in first.
            spool = Spool(directory, lambda: queue, reporter.once)
            try:
                spool.move_others()
            finally:
                spool.close()
            pending = queue.pending_count()
            show = sys.stderr.isatty() and pending > PROGRESS_MIN_EVENTS
            progress = _Progress(sys.stderr, queue, pending) if show else None
            with progress or contextlib.nullcontext():
                while True:
                    # drain() sends batch after batch and stops at the first
                    # failure; try again only while a pass still delivers something.
                    result = delivery.drain(force=True)
                    sent += result.sent
                    failed += result.failed
                    if not (result.failed and result.sent and result.left):
                        break
            left = queue.pending_count()
    finally:
        transport.close()
    print(f"sent {sent}, failed attempts {failed}, left {left}")
    if left and not failed:
        _error(
            f"{_plural(left, 'event')} not sent: leased by another sender, bound to another "
            "collector or key (see `rebind`), or added while flushing; run flush again later"
        )
    return 0 if left == 0 else 1


def add_parser(add: AddCommand) -> None:
    """Add ``flush`` and its options to the parser (``build_parser`` calls it)."""
    flush = add(
        "flush",
        "send everything pending now",
        "Send every pending event in the queue folder (of every session, each with its "
        "own stored header) that is bound to this collector and key: only the folder, the "
        "collector URL and the secret are needed. Prints 'sent N, failed attempts F, "
        "left L'; exits 0 if nothing is left.",
    )
    _add_config_options(flush, _FLUSH_SETTINGS)
