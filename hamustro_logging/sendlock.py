"""The folder's send lock: a sender that cannot write leases sends alone.

Leases (``l/`` rows, see ``store/claims.py``) keep the senders of several
processes off each other's batches. On a full disk a lease cannot be written, yet
sending needs no disk (and is what lets the queue shrink later). So a sender
whose claim failed for want of space claims in memory, writing nothing, but
only while it holds this lock exclusively; a claim that writes leases holds
it shared, so no sender leases a chunk another sends from memory meanwhile.

A ``flock`` on ``send.lock`` in the queue folder: the kernel releases it
when the holding process dies. The file is made by the first sender that
needs it; until then no one sends without leases and claims do not look.

Who calls what: ``Queue.claim`` (``store/claims.py``) takes it shared
around each claim that writes leases; ``Queue.hold_sending`` and ``Queue.let_go_sending`` (called by
``Delivery`` from the sending thread) take and drop it exclusively, for as
long as batches claimed in memory or deletes owed remain. Where it stands
among the store's locks: ``store/db.py``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

__all__ = ["SendLock"]

_NAME = "send.lock"


class SendLock:
    """The send lock of one queue folder, as one ``Queue`` object holds it."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, _NAME)
        self._fd: int | None = None  # open while held exclusively

    @property
    def held(self) -> bool:
        """Whether this object holds the lock exclusively."""
        return self._fd is not None

    def hold(self) -> bool:
        """Take the lock exclusively, without waiting; True if held (now or already)."""
        if self._fd is not None:
            return True
        try:
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(self.path, flags, 0o600)
        except OSError:
            return False  # not even an inode left: no sending without leases
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False  # another sender claims now, or sends without leases
        self._fd = fd
        return True

    def release(self) -> None:
        """Drop the exclusive hold (a process forked meanwhile shares it: unlocked for both)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @contextlib.contextmanager
    def shared(self) -> Iterator[bool]:
        """Around a claim that writes leases: yields False while another sends without them."""
        if self._fd is not None:
            yield True  # it is us
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:  # none (no sender ever went without leases here), or not ours
            yield True
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                yield False
                return
            yield True
        finally:
            os.close(fd)
