"""``hamustro-logging agent``: a sender for a queue folder, in a process of its own.

Apps configured with ``sender="agent"`` only append their events to their
journal segments in the folder (no thread, no network I/O in the app's
process); the agent moves every segment left to others into the store
(and adopts the segments of writers that ended, whatever their sender) and
sends the folder's events bound to its collector and key, with the same
retry rules, leases and counters as a handler's threads.

Who calls what: :func:`run` is the agent's whole loop, on the main thread of
its process (``cli/agent.py``); :func:`agent_alive` is called by apps (a handler's
``flush()`` with ``sender="agent"``) and by ``status``.

An agent holds a shared ``flock`` on ``agent.lock`` in the folder for as long
as it runs: the folder shows whether one is alive (the kernel drops the lock
of a dead agent). Several agents may share a folder: leases and the store's
journal offsets keep them from sending or moving anything twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

from .delivery import Delivery
from .queue import Queue
from .report import Reporter
from .spool import Spool

__all__ = ["LOCK_NAME", "agent_alive", "holding_agent_lock", "run"]

LOCK_NAME = "agent.lock"


def agent_alive(queue_dir: str | os.PathLike[str]) -> bool:
    """True if an agent runs on this folder now (it holds ``agent.lock``)."""
    path = os.path.join(os.fspath(queue_dir), LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # (drops the lock taken just now, if it was taken)
    return False


@contextlib.contextmanager
def holding_agent_lock(queue_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the folder's agent lock (shared: other agents may run too)."""
    path = os.path.join(os.fspath(queue_dir), LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def run(
    queue: Queue,
    delivery: Delivery,
    reporter: Reporter,
    say: Callable[[str], None],
    *,
    interval: float = 0.2,
    stop_timeout: float = 10.0,
    batch_events: int = 500,
    stop: threading.Event | None = None,
) -> int:
    """Move and send until SIGTERM or SIGINT (or ``stop``); return the events left.

    Each pass moves the journal segments in, then sends what is due (every
    pending event; a failing collector is tried again after the backoff).
    On a stop signal the pass in progress ends (a request in flight is
    bounded by the transport's ``max_duration``), one last move and send is
    tried within ``stop_timeout`` seconds, the leases are given back, and
    the count of what is left in the folder is returned.
    """
    stop = stop or threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {
        sig: signal.signal(sig, on_signal)
        for sig in (signal.SIGTERM, signal.SIGINT)
        if threading.current_thread() is threading.main_thread()
    }
    spool = Spool(queue.directory, lambda: queue, reporter.once, batch_events=batch_events)
    try:
        with holding_agent_lock(queue.directory):
            say(f"agent started on {queue.directory} (pid {os.getpid()})")
            while not stop.is_set():
                _pass(spool, delivery, reporter, deadline=None)
                stop.wait(interval)
            deadline = time.monotonic() + stop_timeout
            _pass(spool, delivery, reporter, deadline=deadline, force=True)
            with contextlib.suppress(Exception):
                delivery.give_back()
            left = queue.pending_count()
            say(f"agent stopped: {left} events left in {queue.directory}")
            return left
    finally:
        spool.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _pass(
    spool: Spool,
    delivery: Delivery,
    reporter: Reporter,
    deadline: float | None,
    force: bool = False,
) -> None:
    try:
        spool.move_others()
        reporter.recovered("agent-store", "the store is writable again")
    except Exception as exc:  # the store is unusable now: events wait in the journals
        reporter.problem("agent-store", f"cannot move journals into the store: {exc!r}")
    try:
        delivery.drain(deadline, force=force)
    except Exception as exc:
        reporter.problem("agent-send", f"delivery failed: {exc!r}")
