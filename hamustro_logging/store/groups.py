"""Groups of events: the header and destination each was logged with, and who writes to it.

A group is a session's events logged with one collection header for one
destination (collector and key); ``hid`` names it (a short hash of both).
Its header (``h/``) and destination (``d/``) rows are written once, when a
writer registers it; each ``Queue`` that registered it is named a writer in
an ``l/w/`` row while it is open. A group whose header row is lost while a
writer of it still runs is not damage (that writer still sends it with the
header it holds); once no writer runs, it is set aside
(:mod:`~hamustro_logging.store.damage`).

Who calls what: ``Queue.register_header`` (the tracker when it opens the
queue, on the thread that opens it; the spool step for each journal
segment's group); the claim and ``rebind`` look groups up (:meth:`Groups.get`)
inside their transaction; ``owners.writer_alive`` asks
:data:`_OPEN_WRITERS` which writers of this process are open.
"""

from __future__ import annotations

import weakref

from ..owners import new_owner, writer_alive
from ..wire import md5hex
from .damage import Damage
from .db import Db
from .errors import QueueCorrupt

__all__ = ["Groups"]

#: The writer ids of this process's open queues (a closed or collected Queue
#: writes no more): what ``owners.writer_alive`` asks about this process.
#: The value is the queue's ``Groups``, which lives exactly as long as its Queue.
_OPEN_WRITERS: weakref.WeakValueDictionary[str, Groups] = weakref.WeakValueDictionary()


class Groups:
    """The groups one ``Queue`` knows, and its id as a writer of those it registered."""

    def __init__(self, db: Db, damage: Damage) -> None:
        self._db = db
        self._damage = damage
        #: Header and destination of the groups known good (registered, or checked).
        self.known: dict[tuple[str, str], tuple[bytes, str | None]] = {}
        #: Those this object registered: registered again after a salvage.
        self.registered: dict[tuple[str, str], tuple[bytes, str | None]] = {}
        #: This object's id as a writer of the groups it registers (``l/w/`` rows).
        self.writer = new_owner()
        self.writing()

    def writing(self) -> None:
        """This object is an open writer (again, after ``close``)."""
        _OPEN_WRITERS[self.writer] = self

    def stop_writing(self) -> None:
        """From here on this object is no longer a live writer of its groups."""
        _OPEN_WRITERS.pop(self.writer, None)

    def register(
        self, session: str, header: bytes, destination: str | None, busy_timeout: float | None
    ) -> str:
        """Store a session's collection header; return its id (see ``Queue.register_header``)."""
        if destination is None:
            hid = md5hex(header)[:8]
        else:
            hid = md5hex(destination.encode() + b"\0" + header)[:8]
        db = self._db
        with db.busy_timeout(busy_timeout), db.transaction():
            if destination is not None:
                db.cache.add(f"d/{session}/{hid}", destination)
            db.cache.add(f"h/{session}/{hid}", header)
            self._register_writer(session, hid)
        # Known good from here on: a row of it damaged later is not a reason
        # to set this process's own events aside.
        self.known[(session, hid)] = self.registered[(session, hid)] = (header, destination)
        return hid

    def _register_writer(self, session: str, hid: str) -> None:
        """Name this object a writer of the group; forget writers that ended (in a transaction)."""
        self.writing()
        cache = self._db.cache
        mine = f"l/w/{session}/{hid}/{self.writer.rsplit(':', 1)[-1]}"
        for key in list(self._db.keys_with(f"l/w/{session}/{hid}/")):
            try:
                owner = cache.get(key)
            except QueueCorrupt:
                owner = None
            if key != mine and not (isinstance(owner, str) and writer_alive(owner, _OPEN_WRITERS)):
                cache.delete(key)
        cache.set(mine, self.writer)

    def has_live_writer(self, session: str, hid: str) -> bool:
        """Whether a queue object that registered this group may still write to it."""
        for key in self._db.keys_with(f"l/w/{session}/{hid}/"):
            try:
                owner = self._db.cache.get(key)
            except QueueCorrupt:
                continue
            if isinstance(owner, str) and writer_alive(owner, _OPEN_WRITERS):
                return True
        return False

    def get(self, session: str, hid: str) -> tuple[bytes, str | None] | None:
        """A group's header and destination, or None (and the group set aside) if unusable."""
        known = self.known.get((session, hid))
        if known is not None:
            return known
        cache = self._db.cache
        try:
            header = cache.get(f"h/{session}/{hid}")
            destination = cache.get(f"d/{session}/{hid}")
        except QueueCorrupt:
            header = destination = None
        if isinstance(header, bytes) and (destination is None or isinstance(destination, str)):
            data = header if destination is None else destination.encode() + b"\0" + header
            if md5hex(data)[:8] == hid:
                self.known[(session, hid)] = (header, destination)
                return header, destination
            why = "its header does not match its hash"
        elif self.has_live_writer(session, hid):
            return None  # not damage: its writer still holds the header and sends it
        else:
            why = "its header is missing or unreadable"
        self._damage.set_group_aside(session, hid, why)
        return None
