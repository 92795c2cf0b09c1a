"""The key table: every row the store writes, its shape, and the module that owns it.

This is the one place the store's keys are listed. A module writes only the
families it owns (the right-hand column); the others it reads. Keys are all
``str``; values only ``bytes``, ``str`` and ``int``: nothing is pickled, and
:class:`~hamustro_logging.store.db.SafeDisk` refuses to unpickle what a
tampered file holds.

=========================================  ========================================  ==============
key                                        value                                     owner
=========================================  ========================================  ==============
``e/{session}/{hid}/{first_nr:010d}/{n}``  a chunk: ``n`` framed payloads (bytes)    ``append``
``l/{chunk key}``                          lease on a chunk being sent:              ``claims``
                                           ``token|expiry_ms`` (``owners.py``)
``l/w/{session}/{hid}/{n}``                a writer of the group: its owner id (one  ``groups``
                                           row per Queue that registered the header)
``m/{chunk key}``                          attempts that may have reached the        ``claims``
                                           collector (int)
``r/{session}/{hid}/{nr:010d}/1``          an event the collector refused (bytes)    ``settle``
``x/{key}``                                a row set aside as unusable, its raw      ``damage``
                                           bytes
``h/{session}/{hid}``                      the collection header, fields 1-7 (bytes) ``groups``
``d/{session}/{hid}``                      the destination (collector and key) it    ``groups``
                                           is for (str)
``d/rebound/{destination}``                the destination ``rebind`` moved its      ``rebind``
                                           events to (str)
``n/{session}``                            last ``nr`` given in the session (int)    ``append``
``u/{client_id}``                          the user set with ``set_user`` (str:      ``users``
                                           JSON)
``j/{segment}``                            how far a journal segment was moved in    ``append``
                                           (int: ``offset << 32 | events``; < 0:
                                           done)
``s/pending``, ``s/pending_bytes``         unsent events and their bytes (int)       ``counts``
``s/last_sync``                            epoch milliseconds of the last 200 (int)  ``counts``
``s/rejected``, ``s/aside``                rows in ``r/`` and in ``x/`` (int)        ``counts``
``s/salvage/{file name}``                  a set-aside database being carried:       ``corrupt``
                                           rowid read to (int)
``s/ledger/{count}``                       the folder's lifetime counts (int; the    ``counts``
                                           names: ``ledger.py``)
=========================================  ========================================  ==============

(The owners are modules of :mod:`hamustro_logging.store`; a family another
module also changes says so where it does: ``settle`` stores kept frames as
chunks again and moves rejected events back, ``rebind`` and ``corrupt`` carry
rows of every family, ``damage`` moves any row to ``x/``.)

``hid`` is a short hash of the destination and the header, so events keep
the header they were logged with, and a sender only ever sends what was
logged for its own collector and key. Chunk keys sort by session, header and
``nr``.

:mod:`hamustro_logging.reader` reads the same rows without writing, and
:mod:`hamustro_logging.salvage` reads them out of a damaged file.

>>> chunk_key("s", "ab12cd34", 7, 3)
'e/s/ab12cd34/0000000007/3'
>>> parse_chunk_key("e/s/ab12cd34/0000000007/3"), parse_chunk_key("e/s/oops")
(('s', 'ab12cd34', 7, 3), None)
"""

from __future__ import annotations

from ..ledger import LEDGER_PREFIX, SINCE

__all__ = [
    "ASIDE",
    "KEY_PREFIXES",
    "LAST_SYNC",
    "LEDGER_PREFIX",
    "PENDING",
    "PENDING_BYTES",
    "REJECTED",
    "SALVAGE",
    "SINCE",
    "after",
    "chunk_key",
    "chunk_parts",
    "journal_position",
    "parse_chunk_key",
]

#: Every key this library writes starts with one of these (see the table above).
KEY_PREFIXES = ("e/", "l/", "m/", "r/", "x/", "h/", "d/", "n/", "s/", "u/", "j/")

#: The counters (``counts.Counters``).
PENDING = "s/pending"
PENDING_BYTES = "s/pending_bytes"
LAST_SYNC = "s/last_sync"
REJECTED = "s/rejected"
ASIDE = "s/aside"
#: Followed by a set-aside file's name: the rowid up to which it has been carried.
SALVAGE = "s/salvage/"


def chunk_key(session: str, hid: str, first_nr: int, count: int) -> str:
    return f"e/{session}/{hid}/{first_nr:010d}/{count}"


def chunk_parts(key: str) -> tuple[str, str, int, int]:
    """(session, hid, first nr, count) of a key known to be a chunk's (or a rejected event's)."""
    _, session, hid, first_nr, count = key.split("/")
    return session, hid, int(first_nr), int(count)


def parse_chunk_key(key: str) -> tuple[str, str, int, int] | None:
    """A chunk (or rejected) key's parts, or None if the key is not one we write."""
    try:
        session, hid, first, n = chunk_parts(key)
    except ValueError:
        return None
    if not session or not hid or first < 1 or n < 1:
        return None
    return session, hid, first, n


def journal_position(value: int) -> tuple[int, int] | None:
    """A ``j/{segment}`` row's value as (offset moved to, events moved); None once finished.

    A segment moved to its end and removed keeps its row as minus the time
    it finished (ms), so a mover that opened it before finds it done.

    >>> journal_position(4096 << 32 | 17), journal_position(-1_700_000_000_000)
    ((4096, 17), None)
    """
    return None if value < 0 else (value >> 32, value & 0xFFFFFFFF)


def after(prefix: str) -> str:
    """The smallest string greater than every string starting with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)
