"""Looking at what the store holds, without changing it: sessions, ranges, fates, events.

Who calls what: ``Queue.sessions``, ``unsent_ranges``, ``fates`` and
``iter_events``, from any thread: the tracker's ``stats()`` and the
handler's ``flush()`` (``fates``), the CLI's ``status`` and ``export``.
:func:`summarize_sessions` is shared with the read-only
:class:`~hamustro_logging.reader.QueueReader`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence

from ..owners import lease_held
from ..wire import iter_frames
from .db import Db, now_ms
from .errors import QueueCorrupt
from .keys import parse_chunk_key
from .records import Fate, SessionInfo

__all__ = ["fates", "iter_events", "sessions", "summarize_sessions", "unsent_ranges"]


def summarize_sessions(
    chunks: Iterable[tuple[str, int | None]], get: Callable[[str], object]
) -> list[SessionInfo]:
    """Per session: unsent and leased events, bytes and the oldest ``nr``.

    ``chunks`` are (chunk key, bytes) pairs; ``get`` reads a row (for the
    leases). Shared by :class:`Queue` and the read-only reader.
    """
    out: dict[str, list[int]] = {}
    now, gone = now_ms(), dict[str, bool]()
    for key, length in chunks:
        parsed = parse_chunk_key(key)
        if parsed is None:
            continue
        session, _, first_nr, n = parsed
        info = out.setdefault(session, [0, 0, 0, first_nr])
        info[0] += n
        with contextlib.suppress(QueueCorrupt):
            if lease_held(get("l/" + key), now, gone):
                info[1] += n
        info[2] += length or 0
        info[3] = min(info[3], first_nr)
    return [SessionInfo(s, *v) for s, v in out.items()]


def sessions(db: Db) -> list[SessionInfo]:
    """Per session: unsent and leased events, bytes and the oldest ``nr``."""
    rows = db.sql(
        "SELECT key, length(value) FROM Cache WHERE key > 'e/' AND key < 'e0' AND raw = 1"
    )
    return summarize_sessions(rows, db.cache.get)


def unsent_ranges(db: Db, session: str) -> list[tuple[int, int]]:
    """(first nr, last nr) of every unsent chunk of ``session`` (leased ones included)."""
    out = []
    for key in list(db.keys_with(f"e/{session}/")):
        parsed = parse_chunk_key(key)
        if parsed is not None:
            out.append((parsed[2], parsed[2] + parsed[3] - 1))
    return out


def fates(db: Db, session: str, ranges: Sequence[tuple[int, int]]) -> list[Fate]:
    """Where the events of each ``(first, last)`` range of ``session`` are now (``Queue.fates``)."""
    held: dict[str, list[tuple[int, int]]] = {"pending": [], "rejected": [], "set_aside": []}
    for state, prefix in (("pending", "e/"), ("rejected", "r/"), ("set_aside", "x/e/")):
        for key in list(db.keys_with(f"{prefix}{session}/")):
            parsed = parse_chunk_key(key.removeprefix("x/"))
            if parsed is not None:
                held[state].append((parsed[2], parsed[2] + parsed[3] - 1))
    out = []
    for first, last in ranges:
        counts = {
            state: sum(max(0, min(last, hi) - max(first, lo) + 1) for lo, hi in spans)
            for state, spans in held.items()
        }
        out.append(Fate(first, last, **counts))
    return out


def iter_events(db: Db, rejected: bool = False) -> list[tuple[str, bytes, int, bytes]]:
    """(session, header, nr, framed payload) of every pending (or rejected) event."""
    prefix = "r/" if rejected else "e/"
    out: list[tuple[str, bytes, int, bytes]] = []
    for key in list(db.keys_with(prefix)):
        parsed = parse_chunk_key(key)
        if parsed is None:
            continue
        session, hid, first, _ = parsed
        try:
            value, header = db.cache.get(key), db.cache.get(f"h/{session}/{hid}")
            frames = list(iter_frames(value)) if isinstance(value, bytes) else []
        except (QueueCorrupt, ValueError, IndexError):
            continue
        if isinstance(header, bytes):
            out.extend((session, header, first + i, f) for i, f in enumerate(frames))
    return out
