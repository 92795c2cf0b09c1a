"""What the store raises, and how it tells a full disk and a damaged file from other troubles.

Raised on whichever thread called the store; :mod:`hamustro_logging.queue`
re-exports every name, and the callers (the tracker, the flusher, delivery,
the CLI) catch them there.
"""

from __future__ import annotations

import errno
import sqlite3

import diskcache

__all__ = [
    "DiskSpaceLow",
    "QueueBusy",
    "QueueCorrupt",
    "QueueFull",
    "QueueUnusableHere",
    "disk_full",
    "is_corruption",
]


class QueueCorrupt(ValueError):
    """The queue folder holds something this library never writes."""


class QueueFull(RuntimeError):
    """The queue holds ``max_queue_events`` / ``max_queue_bytes`` unsent; the event was refused."""


class QueueUnusableHere(RuntimeError):
    """This process must not open the queue's database (see ``sqlite_usable_after_fork``)."""


class QueueBusy(diskcache.Timeout):
    """Another process held the queue's write lock longer than the caller would wait."""


class DiskSpaceLow(OSError):
    """The disk of the queue folder has less free space than ``min_free_bytes``.

    New events are refused so that the queue never takes the last of the
    disk: sending (which needs a little space for leases and deletes) keeps
    working, and sending is what frees space.
    """


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the user's quota) is full.

    SQLite's "database or disk is full" (SQLITE_FULL), or an ``OSError``
    with ENOSPC or EDQUOT.
    """
    if isinstance(exc, sqlite3.OperationalError):
        return getattr(exc, "sqlite_errorcode", None) == 13 or "disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def is_corruption(exc: BaseException) -> bool:
    """SQLite's "database disk image is malformed" / "file is not a database".

    Locks, a full disk, I/O errors and a read-only file are
    ``OperationalError``: passing troubles, not damage.
    """
    return type(exc) is sqlite3.DatabaseError
