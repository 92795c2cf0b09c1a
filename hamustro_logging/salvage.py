"""Read what can still be read from a damaged queue database, a bounded slice at a time.

Used by the store (``store/corrupt.py``) on a database it has set aside as
corrupt (SQLite said "database disk image is malformed" or "file is not a
database"). Plain
``sqlite3`` on that file only: nothing is unpickled, and only rows a queue
writes (a known key prefix, a raw str, bytes or int value; not the counters,
which are rebuilt from the rows, but the ledger's lifetime counts, which
cannot be) are kept.

Who calls what: :func:`read_slice`, :func:`known_numbers` and :func:`rows_with`
are called by the store under the folder's salvage lock (``salvage.lock``), from whichever
thread opens the queue or claims a batch; they touch nothing but the file
they are given.

**Bounded.** A file of any size and any damage costs a slice of at most
about ``seconds`` (``SALVAGE_SECONDS`` by default), and a file that is not a
database at all costs one read of its first 16 bytes. Reading goes by rowid:
a scan from the last rowid read; when the scan meets a damaged page, the
reader gallops past it (rowid + 1, + 2, + 4, ...: each probe is one query
that seeks the B-tree from its root) and bisects back to the first rowid a
scan can start from again. A damaged region costs some 2 log2(its width)
queries, whatever its width; the rows inside it are lost.

**Resumable.** A slice returns the rowid up to which the file has been read
(or found unreadable); the store keeps it in the new database in the same
transaction as the rows it carried (``s/salvage/<file name>``), and the next
slice, in this process or another, starts there. So a large file is carried over a
few opens and claims, never twice, and what is not carried yet stays in the
set-aside file.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import diskcache.core

__all__ = ["SALVAGE_SECONDS", "Slice", "is_database", "known_numbers", "read_slice", "rows_with"]

#: How long one slice of a salvage may read (the default of ``Queue``'s
#: ``salvage_seconds``): short enough that opening a folder with a damaged
#: database stays quick, long enough to carry a queue of ordinary size
#: (chunks hold up to 500 events: a million events are some 2,000 rows) in one.
SALVAGE_SECONDS = 0.5

#: Rows read per query of a scan (the deadline is looked at between queries).
_PAGE = 256
#: Rowids looked up one at a time past a damaged page, without finding a
#: readable row, before galloping to where a scan starts again. Damage is
#: patchy (a B-tree's pages are not in rowid order on disk): readable rows
#: sit between damaged ones, which a gallop alone would jump over.
_MISSES = 2000
#: The largest rowid SQLite gives (2**63 - 1): a gallop past damage stops there.
_MAX_ROWID = (1 << 63) - 1
#: The 16 bytes every SQLite 3 database file starts with.
_MAGIC = b"SQLite format 3\x00"

_SELECT = "SELECT rowid, key, raw, mode, value FROM Cache WHERE rowid > ? ORDER BY rowid LIMIT ?"


@dataclass(frozen=True)
class Slice:
    """What one slice read: rows of ours, and where the next slice starts.

    ``position``: every rowid up to it has been read or found unreadable.
    ``done``: nothing after ``position`` can be read (the file is finished).
    """

    rows: list[tuple[str, Any]]
    position: int
    done: bool


def is_database(path: str) -> bool:
    """Whether the file starts as an SQLite 3 database does (if not, SQLite reads nothing)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(_MAGIC)) == _MAGIC
    except OSError:
        return False


def read_slice(
    path: str,
    prefixes: Sequence[str],
    after: int = 0,
    seconds: float = SALVAGE_SECONDS,
    timeout: float = 10.0,
) -> Slice:
    """Read the rows of ours after rowid ``after``, in rowid order, for about ``seconds``.

    Every step (a page of rows, one rowid looked up, one damaged region
    galloped past) moves the position on, and at least one is taken whatever
    ``seconds``: slices always make progress.
    """
    if not is_database(path):
        return Slice([], after, True)
    try:
        con = sqlite3.connect(path, timeout=timeout)
    except sqlite3.Error:
        return Slice([], after, True)
    deadline = time.monotonic() + seconds
    rows: list[tuple[str, Any]] = []
    position = after
    misses = 0  # rowids looked up in a row without a readable one (0: scanning)
    with contextlib.closing(con):
        last = _last_rowid(con)  # None when the rightmost pages are damaged
        while True:
            if not misses:
                try:
                    read = 0
                    for rowid, key, raw, mode, value in con.execute(_SELECT, (position, _PAGE)):
                        position = rowid
                        read += 1
                        _keep(rows, prefixes, key, raw, mode, value)
                    if read < _PAGE:
                        return Slice(rows, position, True)  # the end of the table
                except sqlite3.Error:  # a damaged page after ``position``
                    # The sqlite3 module reads a row ahead: the row before the
                    # damage was read but not handed out. One row alone gets it.
                    first = _first_after(con, position)
                    if first == []:
                        return Slice(rows, position, True)
                    if not first:
                        misses = 1  # the next row is unreadable: one rowid at a time
                        continue  # (a step that moves the position on comes first)
                    position = first[0][0]
                    _keep(rows, prefixes, *first[0][1:])
            elif last is not None and position >= last:
                return Slice(rows, position, True)  # looked up to the last rowid
            elif misses <= _MISSES:
                position += 1
                found = _row(con, position)
                if found:
                    _keep(rows, prefixes, *found)
                    misses = 0
                else:
                    misses += 1
            else:  # a long run of nothing: gallop to where a scan starts again, if anywhere
                resume = _past_damage(con, position)
                if resume is None:
                    return Slice(rows, position, True)
                position, misses = resume, 0
            if time.monotonic() >= deadline:
                return Slice(rows, position, False)


def _last_rowid(con: sqlite3.Connection) -> int | None:
    """The table's largest rowid (its rightmost pages only); None if they are unreadable."""
    try:
        (found,) = con.execute("SELECT max(rowid) FROM Cache").fetchone()
    except sqlite3.Error:
        return None
    return int(found) if found is not None else 0


def _row(con: sqlite3.Connection, rowid: int) -> tuple[Any, ...] | None:
    """(key, raw, mode, value) of the row ``rowid``; None if there is none or it is unreadable."""
    try:
        found = con.execute(
            "SELECT key, raw, mode, value FROM Cache WHERE rowid = ?", (rowid,)
        ).fetchone()
    except sqlite3.Error:
        return None
    return tuple(found) if found is not None else None


def _first_after(con: sqlite3.Connection, rowid: int) -> list[Any] | None:
    """The first row after ``rowid`` (a list of one, or empty at the end); None if unreadable."""
    try:
        return con.execute(_SELECT, (rowid, 1)).fetchall()
    except sqlite3.Error:
        return None


def _scan_starts(con: sqlite3.Connection, rowid: int) -> bool:
    """Whether a scan from after ``rowid`` reads its first row (or finds the end) without error."""
    return _first_after(con, rowid) is not None


def _past_damage(con: sqlite3.Connection, failed: int) -> int | None:
    """The smallest rowid after ``failed`` from which a scan starts again; None if none does.

    Gallops (``failed`` + 1, + 2, + 4, ...) to a rowid a scan starts from,
    then bisects back between it and the last failure. The rowids in between
    are lost (unreadable).
    """
    step, good = 1, None
    while good is None:
        probe = failed + step
        if probe >= _MAX_ROWID:
            return None
        if _scan_starts(con, probe):
            good = probe
        else:
            failed, step = probe, step * 2
    while good - failed > 1:
        middle = (failed + good) // 2
        if _scan_starts(con, middle):
            good = middle
        else:
            failed = middle
    return good


def known_numbers(path: str, timeout: float = 10.0) -> dict[str, int]:
    """The highest ``nr`` the file shows per session, from its counters and its chunks' keys.

    Read through the key index only (no value but the counters'), which
    outlives most damage to the table, and quick: a few queries over the
    keys. The numbering of the new database jumps past these before any row
    is carried, so a row carried later never meets a number given meanwhile.
    Whatever cannot be read is left out (the carried rows raise the numbers
    again as they come).
    """
    known: dict[str, int] = {}
    if not is_database(path):
        return known
    try:
        con = sqlite3.connect(path, timeout=timeout)
    except sqlite3.Error:
        return known
    with contextlib.closing(con):
        with contextlib.suppress(sqlite3.Error):
            for key, value in con.execute(
                "SELECT key, value FROM Cache WHERE key > 'n/' AND key < 'n0' AND raw = 1"
            ):
                if isinstance(key, str) and type(value) is int:
                    _raise(known, key[2:], value)
        for lo, hi in (("e/", "e0"), ("r/", "r0"), ("x/e/", "x/e0")):
            with contextlib.suppress(sqlite3.Error):
                for (key,) in con.execute(
                    "SELECT key FROM Cache WHERE key > ? AND key < ? AND raw = 1", (lo, hi)
                ):
                    parts = str(key).removeprefix("x/").split("/")
                    with contextlib.suppress(ValueError):
                        if len(parts) == 5 and parts[1]:
                            _raise(known, parts[1], int(parts[3]) + int(parts[4]) - 1)
    return known


def rows_with(
    path: str, prefix: str, prefixes: Sequence[str], timeout: float = 10.0
) -> list[tuple[str, Any]]:
    """The readable rows of ours whose key starts with ``prefix``, through the key index.

    For the few rows that must be in the new database before anything else
    happens there (how far each journal segment was moved in: carried later,
    a segment could be moved in again from its start). Empty if unreadable.
    """
    rows: list[tuple[str, Any]] = []
    if not is_database(path):
        return rows
    try:
        con = sqlite3.connect(path, timeout=timeout)
    except sqlite3.Error:
        return rows
    with contextlib.closing(con), contextlib.suppress(sqlite3.Error):
        for key, raw, mode, value in con.execute(
            "SELECT key, raw, mode, value FROM Cache WHERE key >= ? AND key < ? AND raw = 1",
            (prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)),
        ):
            _keep(rows, prefixes, key, raw, mode, value)
    return rows


def _raise(known: dict[str, int], session: str, nr: int) -> None:
    if nr > known.get(session, 0):
        known[session] = nr


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
