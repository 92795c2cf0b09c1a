"""What the store hands back: a claimed batch, and what an append, a settle or a look found.

Plain frozen values, made by the store's parts and read by their callers
(delivery on the sending thread, the tracker and the flusher, the CLI). No
I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..wire import iter_frames
from .keys import chunk_parts

__all__ = ["Appended", "Batch", "Fate", "SessionInfo", "Settled"]


@dataclass(frozen=True)
class Batch:
    """Chunks of one session claimed for one request.

    ``header`` + ``data`` is the complete ``Collection``: the header's
    fields 1-7, then the stored payload frames, concatenated.
    """

    session: str
    hid: str
    keys: tuple[str, ...]
    header: bytes
    data: bytes
    count: int
    token: str
    #: Each chunk's bytes in ``data``, in the order of ``keys``.
    sizes: tuple[int, ...]
    #: False: claimed in memory, no lease written (a full disk; see ``Queue.claim``).
    leased: bool = True

    @property
    def body(self) -> bytes:
        return self.header + self.data

    def chunks(self) -> Iterator[tuple[str, bytes]]:
        """Each chunk's key and its frames (as stored: concatenated), in order."""
        offset = 0
        for key, size in zip(self.keys, self.sizes, strict=True):
            yield key, self.data[offset : offset + size]
            offset += size

    def frames(self) -> list[tuple[int, bytes]]:
        """Each payload of the batch with its ``nr`` (chunks hold consecutive numbers)."""
        numbers = [
            nr
            for key in self.keys
            for first, n in [chunk_parts(key)[2:]]
            for nr in range(first, first + n)
        ]
        return list(zip(numbers, iter_frames(self.data), strict=True))


@dataclass(frozen=True)
class Appended:
    """What :meth:`Queue.append` did: numbers given, events stored and refused."""

    first_nr: int
    last_nr: int
    stored: int
    dropped: int


@dataclass(frozen=True)
class Settled:
    """What :meth:`Queue.ack` and :meth:`Queue.settle` did."""

    sent: int = 0
    resent: int = 0
    rejected: int = 0


@dataclass(frozen=True)
class Fate:
    """Where the events ``first``..``last`` of a session are now (:meth:`Queue.fates`).

    ``pending``: still to send (leased ones included); ``rejected``: in the
    rejected area (refused by the collector); ``set_aside``: in a row set
    aside as unusable. The rest of the range was delivered (a 200 deleted
    it), unless the database was set aside as corrupt since (the ledger's
    ``set_aside`` grew then) or the folder was deleted.
    """

    first: int
    last: int
    pending: int = 0
    rejected: int = 0
    set_aside: int = 0

    @property
    def delivered(self) -> int:
        return self.last - self.first + 1 - self.pending - self.rejected - self.set_aside


@dataclass(frozen=True)
class SessionInfo:
    """What ``Queue.sessions`` reports of one session's unsent events."""

    session: str
    pending: int
    leased: int
    bytes: int
    oldest_nr: int
