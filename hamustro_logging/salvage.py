"""Read what can still be read from a damaged queue database.

Used by ``Queue._salvage`` on a database it has set aside as corrupt (SQLite
said "database disk image is malformed" or "file is not a database"). Plain
``sqlite3`` on that file only: nothing is written, nothing is unpickled, and
only rows a queue writes (a known key prefix, a raw str, bytes or int value;
not the counters, which are rebuilt from the rows, but the ledger's lifetime
counts, which cannot be) are kept.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from typing import Any

import diskcache.core

__all__ = ["readable_rows"]

#: A scan resumed after a damaged page gives up after this many rowids in a
#: row without a readable row.
_MISSES = 2000


def readable_rows(
    path: str, prefixes: Sequence[str], timeout: float = 10.0
) -> list[tuple[str, Any]]:
    """(key, value) of every readable row of ours in the database at ``path``, in rowid order.

    A scan stops at a damaged page; the rows read before it are kept, and the
    reading goes on after it by rowid, one lookup each (a lookup may still
    find rows the scan would have reached), then scans again.
    """
    rows: list[tuple[str, Any]] = []
    try:
        con = sqlite3.connect(path, timeout=timeout)
    except sqlite3.Error:
        return rows
    with contextlib.closing(con):
        last = 0
        for _ in range(1000):  # a bounded walk past damaged pages
            try:
                cursor = con.execute(
                    "SELECT rowid, key, raw, mode, value FROM Cache WHERE rowid > ? ORDER BY rowid",
                    (last,),
                )
                for rowid, key, raw, mode, value in cursor:  # kept as they come
                    last = rowid
                    _keep(rows, prefixes, key, raw, mode, value)
                break
            except sqlite3.Error:  # a damaged page: read on, one row at a time
                last = _one_by_one(con, last, rows, prefixes)
    return rows


def _one_by_one(
    con: sqlite3.Connection, last: int, rows: list[tuple[str, Any]], prefixes: Sequence[str]
) -> int:
    """Read rows after ``last`` by rowid, one lookup each, past the damage; the next start."""
    misses, rowid = 0, last
    while misses < _MISSES:
        rowid += 1
        try:
            row = con.execute(
                "SELECT key, raw, mode, value FROM Cache WHERE rowid = ?", (rowid,)
            ).fetchone()
        except sqlite3.Error:
            row = None
        if row is None:
            misses += 1
            continue
        misses = 0
        _keep(rows, prefixes, *row)
    return rowid


def _keep(
    rows: list[tuple[str, Any]], prefixes: Sequence[str], key: Any, raw: Any, mode: Any, value: Any
) -> None:
    """Keep a row if it is one a queue writes (never a pickle, never a counter)."""
    if (
        raw == 1
        and mode == diskcache.core.MODE_RAW
        and isinstance(key, str)
        and key[:2] in prefixes
        # Counters are rebuilt from the rows; the ledger's lifetime counts cannot be.
        and (not key.startswith("s/") or key.startswith("s/ledger/"))
        and isinstance(value, (bytes, str, int))
    ):
        rows.append((key, value))
