"""Rows the library cannot use: set aside under ``x/``, counted, and the rest goes on.

A malformed key, a chunk that is not a run of payloads, a pickle, a group
whose header is missing or does not match its hash: such a row is moved to
``x/{key}`` with its raw bytes (kept, counted in ``s/aside``, exportable
with ``hamustro-logging export --aside``), its events are counted in the
ledger's ``set_aside``, and the claim that met it goes on with the rest.
(A database SQLite reports as corrupt as a whole is
:mod:`~hamustro_logging.store.corrupt`'s job.)

Who calls what: the claim (:mod:`~hamustro_logging.store.claims`) and
``rebind`` (through :mod:`~hamustro_logging.store.groups`) when they meet
such a row, inside their transaction, on the sending thread or the CLI's;
``Queue.iter_aside`` (``export``) reads what was set aside.
"""

from __future__ import annotations

import diskcache.core

from ..wire import count_frames
from .counts import Books
from .db import Db
from .errors import QueueCorrupt
from .keys import parse_chunk_key

__all__ = ["Damage"]


class Damage:
    """Sets unusable rows aside (inside the caller's transaction) and says so.

    ``happened``: a row was set aside since the caller last cleared it (the
    claim then rebuilds the counters).
    """

    def __init__(self, db: Db, books: Books) -> None:
        self._db = db
        self._books = books
        self.happened = False

    def chunk(self, key: str, n: int) -> bytes | None:
        """A chunk's bytes, or None (and the chunk set aside) if they are not ``n`` payloads."""
        try:
            value = self._db.cache.get(key)
        except QueueCorrupt:
            value = None
        if value is None and not self._db.sql("SELECT 1 FROM Cache WHERE key = ?", (key,)):
            return None  # deleted meanwhile
        if isinstance(value, bytes) and count_frames(value) == n:
            return value
        self.set_aside(key, "not a run of payloads")
        return None

    def set_aside(self, key: str, why: str, say: bool = True) -> None:
        """Move one row to ``x/`` (inside a transaction), with its lease and attempts.

        A chunk's events count in the ledger's ``set_aside``: the payloads
        its bytes hold, or where they are not payloads, as many as its key
        says.
        """
        db = self._db
        raw = db.raw(key)
        parsed = parse_chunk_key(key) if key.startswith("e/") else None
        if parsed is not None:
            framed = count_frames(raw) if self._is_raw_bytes(key) else -1
            self._books.book({"set_aside": framed if framed > 0 else parsed[3]})
        db.cache.set("x/" + key, raw)
        for name in (key, "l/" + key, "m/" + key):
            db.cache.delete(name)
        self.happened = True
        if say:
            db.notify(
                f"set aside an unusable row of the queue in {db.directory} ({key}: {why}); "
                "the rest is sent as usual (see `hamustro-logging status`)"
            )

    def set_group_aside(self, session: str, hid: str, why: str) -> None:
        """Set aside every chunk of a group, and its header and destination rows."""
        db = self._db
        keys = list(db.keys_with(f"e/{session}/{hid}/"))
        for key in keys:
            self.set_aside(key, why, say=False)
        for key in (f"h/{session}/{hid}", f"d/{session}/{hid}"):
            if db.sql("SELECT 1 FROM Cache WHERE key = ? AND raw = 1", (key,)):
                db.cache.set("x/" + key, db.raw(key))
                db.cache.delete(key)
        db.notify(
            f"set aside {len(keys)} chunks of session {session} in the queue in "
            f"{db.directory}: {why}; the rest is sent as usual (see `hamustro-logging status`)"
        )

    def iter_aside(self) -> list[tuple[str, bytes]]:
        """(original key, raw bytes) of every row set aside."""
        return [(key[2:], self._db.raw(key)) for key in list(self._db.keys_with("x/"))]

    def _is_raw_bytes(self, key: str) -> bool:
        """Whether the row is stored as plain bytes (not a pickle, a file or text)."""
        rows = self._db.sql(
            "SELECT mode, typeof(value) FROM Cache WHERE key = ? AND raw = 1", (key,)
        )
        return bool(rows) and tuple(rows[0]) == (diskcache.core.MODE_RAW, "blob")
