"""Rebinding: every group of events moves to another destination (a rotated key, a moved collector).

Who calls what: ``Queue.rebind``, called by ``hamustro-logging rebind`` on
the CLI's thread.
"""

from __future__ import annotations

from ..wire import md5hex
from .append import Appender
from .db import Db
from .groups import Groups
from .keys import chunk_parts, parse_chunk_key

__all__ = ["rebind"]


def rebind(db: Db, groups: Groups, appender: Appender, destination: str) -> int:
    """Bind every group of events to ``destination``; return how many events moved.

    For a rotated key or a collector that moved: events logged for the
    old one are otherwise left for a sender configured for it. Leases
    are dropped (a sender of the old destination still in a request
    then does not delete what it sent; the attempt stays counted, so the
    next delivery counts as a resend).

    The old group's header and destination rows stay: an app still
    running with the old configuration (a rolling rotation) goes on
    logging into it, and those events stay pending for the old
    destination, never set aside. ``d/rebound/{old}`` remembers where
    the old destination's events went, so ``status`` can say that a
    later ``rebind`` moves them too.
    """
    moved = 0
    with db.transaction():
        cache = db.cache
        found = {
            parsed[:2]
            for prefix in ("e/", "r/")
            for key in db.keys_with(prefix)
            if (parsed := parse_chunk_key(key)) is not None
        }
        for session, hid in sorted(found):
            info = groups.get(session, hid)
            if info is None or info[1] == destination:
                continue
            header = info[0]
            new = md5hex(destination.encode() + b"\0" + header)[:8]
            cache.set(f"h/{session}/{new}", header)
            cache.set(f"d/{session}/{new}", destination)
            for prefix in ("e/", "r/"):
                for key in list(db.keys_with(f"{prefix}{session}/{hid}/")):
                    _, _, first, n = chunk_parts(key)
                    target = f"{prefix}{session}/{new}/{first:010d}/{n}"
                    cache.set(target, cache.get(key))
                    attempts = db.int_row("m/" + key)
                    if attempts:
                        cache.set("m/" + target, attempts)
                    for old in (key, "l/" + key, "m/" + key):
                        cache.delete(old)
                    moved += n if prefix == "e/" else 1
            if info[1] is not None:
                cache.set(f"d/rebound/{info[1]}", destination)
        appender.tail = None
    return moved
