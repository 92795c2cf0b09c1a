"""The on-disk event queue of one folder: the store's parts, put together behind one object.

:class:`Queue` is what the rest of the library holds. Each of its methods
runs under the store's fork gate (:func:`~hamustro_logging.store.db.gated`)
and hands the work to the part of :mod:`hamustro_logging.store` whose job it
is; this module only puts the parts together and keeps the names callers
import from here.

Who calls what:

* ``append`` is called by ``ClientTracker.track_event`` on the application's
  thread; ``append_journal`` and ``finish_journal`` by whoever moves journal
  segments in (:mod:`hamustro_logging.spool`: the handler's spool thread, the
  agent, the CLI);
* ``claim``, ``ack``, ``settle``, ``release`` and ``give_back`` by whoever
  sends: the handler's send thread, or ``ClientTracker.flush``;
* the read-only counters by anyone.

A ``Queue`` object is safe to share between threads: diskcache keeps one
SQLite connection per thread. It must not be used across ``os.fork()``: the
child opens a new one (see ``HamustroHandler``).

Where each job lives (modules of :mod:`hamustro_logging.store`):

=================  ==============================================================
``keys``           the key table: every row the store writes, and who owns it
``db``             the SQLite connection, the fork gate, transactions: the locks
``records``        what the store hands back (``Batch``, ``Appended``, ...)
``errors``         what it raises
``counts``         the counters (``s/pending``...) and the ledger's rows
``groups``         headers and destinations of each group, and its writers
``append``         numbering and storing: ``append``, ``append_journal``
``claims``         claims, turns, leases and attempts
``settle``         what a batch becomes after the answer; the rejected area
``damage``         rows set aside as unusable
``corrupt``        a database SQLite reports as corrupt: set aside and carried
``rebind``         moving every group to another destination
``users``          schema 2's signed-in user of each client
``reading``        looking without changing: sessions, ranges, fates, events
=================  ==============================================================
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Collection, Container, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import diskcache

from .ledger import Ledger
from .owners import lease_held, new_owner
from .salvage import SALVAGE_SECONDS
from .store import reading, users
from .store.append import NUMBER_GAP, Appender
from .store.claims import Claims
from .store.corrupt import Salvage
from .store.counts import Books, Counters
from .store.damage import Damage
from .store.db import Db, SafeDisk, file_id, gated, sqlite_usable_after_fork
from .store.errors import (
    DiskSpaceLow,
    QueueBusy,
    QueueCorrupt,
    QueueFull,
    QueueUnusableHere,
    disk_full,
    is_corruption,
)
from .store.groups import Groups
from .store.keys import ASIDE, KEY_PREFIXES, PENDING, PENDING_BYTES, REJECTED, parse_chunk_key
from .store.reading import summarize_sessions
from .store.rebind import rebind
from .store.records import Appended, Batch, Fate, SessionInfo, Settled
from .store.settle import Settler
from .wire import encode_payloads

__all__ = [
    "KEY_PREFIXES",
    "NUMBER_GAP",
    "Appended",
    "Batch",
    "DiskSpaceLow",
    "Fate",
    "Queue",
    "QueueBusy",
    "QueueCorrupt",
    "QueueFull",
    "QueueUnusableHere",
    "SafeDisk",
    "SessionInfo",
    "Settled",
    "disk_full",
    "lease_held",
    "new_owner",
    "parse_chunk_key",
    "sqlite_usable_after_fork",
    "summarize_sessions",
]


def _kept(part: str, name: str) -> Any:
    """A ``Queue`` attribute kept by one of its parts: reading or setting it reaches the part."""
    return property(
        lambda queue: getattr(getattr(queue, part), name),
        lambda queue, value: setattr(getattr(queue, part), name, value),
        doc=f"Kept by its ``{part.lstrip('_')}`` (a change holds from the next call).",
    )


class Queue:
    """The durable queue of one folder.

    >>> import tempfile
    >>> from hamustro_logging.wire import Event
    >>> q = Queue(tempfile.mkdtemp())
    >>> hid = q.register_header("sess", b"\\x0a\\x01d")
    >>> q.append("sess", hid, [Event(1, b"a"), Event(2, b"b")])
    Appended(first_nr=1, last_nr=2, stored=2, dropped=0)
    >>> batch = q.claim("me", lease_seconds=60)
    >>> batch.count, q.pending_count()
    (2, 2)
    >>> q.ack(batch), q.pending_count()
    (Settled(sent=2, resent=0, rejected=0), 0)
    >>> q.close()

    ``carry_numbers`` (session -> last ``nr``) are numbers handed out before,
    in a folder that was since deleted or set aside: numbering goes on after
    them, never reusing one. ``notify`` gets a line when the queue repairs
    itself (a row set aside, a database salvaged).

    Its parts share one :class:`~hamustro_logging.store.db.Db` (the
    connection and its locks) and call each other only downwards (groups
    use damage, settling uses appending, a salvage uses most of them), so
    each can be read alone. None of them holds the ``Queue``: a ``Queue``
    nobody holds is gone at once, and so is its writer id.
    """

    directory: str = _kept("_db", "directory")
    timeout: float = _kept("_db", "timeout")
    chunk_events: int = _kept("_appender", "chunk_events")
    chunk_bytes: int = _kept("_appender", "chunk_bytes")
    max_events: int = _kept("_appender", "max_events")
    max_bytes: int = _kept("_appender", "max_bytes")
    min_free_bytes: int = _kept("_appender", "min_free_bytes")
    salvage_seconds: float = _kept("_salvager", "salvage_seconds")
    #: This object's id as a writer of the groups it registers (``l/w/`` rows).
    writer: str = _kept("_groups", "writer")

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        chunk_events: int = 500,
        chunk_bytes: int = 32 * 1024,
        max_events: int = 10_000_000,
        max_bytes: int = 1 << 30,
        min_free_bytes: int = 0,
        timeout: float = 10.0,
        carry_numbers: Mapping[str, int] | None = None,
        notify: Callable[[str], None] | None = None,
        open_timeout: float | None = None,
        salvage_seconds: float = SALVAGE_SECONDS,
    ) -> None:
        db = self._db = Db(
            os.fspath(directory), timeout=timeout, open_timeout=open_timeout, notify=notify
        )
        counters, books = self._counters, self._books = Counters(db), Books(db)
        damage = self._damage = Damage(db, books)
        groups = self._groups = Groups(db, damage)
        appender = self._appender = Appender(
            db,
            counters,
            books,
            chunk_events=chunk_events,
            chunk_bytes=chunk_bytes,
            max_events=max_events,
            max_bytes=max_bytes,
            min_free_bytes=min_free_bytes,
            carry_numbers=carry_numbers,
        )
        self._claims = Claims(db, counters, books, groups, damage)
        self._settler = Settler(db, counters, books, appender)
        self._salvager = Salvage(db, counters, books, appender, groups, salvage_seconds)
        with db.gate():
            try:
                db.open(books.begin)
            except sqlite3.DatabaseError as exc:
                if not is_corruption(exc):
                    raise
                db.db_id = file_id(db.path)
                self._salvage(str(exc))
            appender.carry_numbers()
            self._salvager.resume()

    def _salvage(self, error: str) -> None:
        """Set a corrupt database aside and carry what can be read of it (``store.corrupt``)."""
        self._salvager.salvage(error, self.register_header)

    def replaced(self) -> bool:
        """True if the folder's database is no longer the file this object opened.

        (The folder was deleted, or another process set a corrupt database
        aside.) SQLite would otherwise go on writing into a deleted file.
        """
        return self._db.replaced()

    @gated
    def close(self) -> None:
        """Close this thread's SQLite connection (others close with their threads).

        From here on this object is no longer a live writer of its groups
        (until it writes again).
        """
        self._claims.send_lock.release()
        self._groups.stop_writing()
        self._db.close()

    # -- appending and numbering (store/groups.py, store/append.py) ---------------

    @gated
    def register_header(
        self,
        session: str,
        header: bytes,
        destination: str | None = None,
        *,
        busy_timeout: float | None = None,
    ) -> str:
        """Store a session's collection header; return its id for :meth:`append`.

        ``destination`` names the collector and key the events are for; only
        a sender for that destination claims them.
        """
        return self._groups.register(session, header, destination, busy_timeout)

    @gated
    def append(
        self,
        session: str,
        hid: str,
        events: Sequence[Any],
        default_ip: bytes | None = None,
        *,
        busy_timeout: float | None = None,
        encode: Callable[[Sequence[Any], int, bytes | None], list[bytes]] = encode_payloads,
    ) -> Appended:
        """Number and store ``events`` (``Appender.append``: limits, errors)."""
        done = self._appender.append(
            session, hid, events, default_ip, busy_timeout=busy_timeout, encode=encode
        )
        self._groups.writing()  # writing again after close()
        return done

    @gated
    def append_journal(
        self,
        segment: str,
        read: Callable[[int], tuple[int, list[bytes]]],
        session: str,
        hid: str,
        schema: int,
        *,
        busy_timeout: float | None = None,
        known: tuple[int, int] | None = None,
    ) -> tuple[Appended, int, int]:
        """Move the next records of a journal segment in, exactly once (see ``Appender``)."""
        return self._appender.append_journal(
            segment, read, session, hid, schema, busy_timeout=busy_timeout, known=known
        )

    @gated
    def finish_journal(self, segment: str) -> None:
        """A segment moved to its end is removed: its row says so, for good."""
        self._appender.finish_journal(segment)

    @gated
    def journal_offsets(self) -> dict[str, tuple[int, int]]:
        """How far each journal segment not finished was moved in: name -> (offset, events)."""
        return self._appender.journal_offsets()

    def last_known(self) -> dict[str, int]:
        """The last ``nr`` this object handed out or saw, per session (no I/O)."""
        return dict(self._appender.known)

    @gated
    def last_numbers(self) -> dict[str, int]:
        """The last ``nr`` given in every session this folder has seen."""
        return self._appender.last_numbers()

    # -- sending (store/claims.py, store/settle.py) ----------------------------------

    @gated
    def claim(
        self,
        owner: str,
        lease_seconds: float,
        max_events: int = 500,
        max_bytes: int = 64 * 1024,
        *,
        destination: str | Collection[str] | None = None,
        skip: Container[str] = (),
        exclude: Container[str] = (),
        lease: bool = True,
    ) -> Batch | None:
        """Lease unleased chunks of one group, up to the limits (see ``Claims.claim``)."""
        self._salvager.resume()
        return self._claims.claim(
            owner,
            lease_seconds,
            max_events,
            max_bytes,
            destination=destination,
            skip=skip,
            exclude=exclude,
            lease=lease,
        )

    def hold_sending(self) -> bool:
        """Take the folder's send lock (to claim without leases); False if another holds it."""
        return self._claims.send_lock.hold()

    def let_go_sending(self) -> None:
        """Drop the send lock taken by :meth:`hold_sending` (no unleased batch is left)."""
        self._claims.send_lock.release()

    @gated
    def ack(self, batch: Batch) -> Settled:
        """Delete a batch after the collector answered 200.

        Only chunks whose lease still carries ``batch.token`` are deleted: if
        another sender took a chunk over after our lease ran out, that sender
        owns it now (and its delivery will count as a resend).
        """
        return self.settle(batch, [True] * batch.count)

    @gated
    def settle(
        self,
        batch: Batch,
        verdicts: Sequence[bool | str | None],
        kept_maybe_sent: bool | Sequence[bool] = False,
    ) -> Settled:
        """Apply a verdict per payload of ``batch``, in one transaction (``Settler.settle``)."""
        return self._settler.settle(batch, verdicts, kept_maybe_sent)

    @gated
    def release(self, batch: Batch, maybe_sent: bool = False) -> Settled:
        """Give a batch back unsent (any answer but 200): drop our leases (``Settler.release``)."""
        return self._settler.release(batch, maybe_sent)

    @gated
    def renew(self, batch: Batch, lease_seconds: float) -> None:
        """Extend our leases on ``batch`` (a long bisection needs more time)."""
        self._settler.renew(batch, lease_seconds)

    @gated
    def give_back(self, owner: str) -> int:
        """Drop every lease ``owner`` holds (it stops with a request in flight); return how many."""
        return self._settler.give_back(owner)

    @gated
    def retry_rejected(self) -> int:
        """Move every rejected event back to pending; return how many moved."""
        return self._settler.retry_rejected()

    # -- the rest of the jobs (store/rebind.py, store/users.py, store/counts.py) ----

    @gated
    def rebind(self, destination: str) -> int:
        """Bind every group of events to ``destination``; return how many events moved."""
        return rebind(self._db, self._groups, self._appender, destination)

    @gated
    def set_user(self, client_id: str, tenant_id: str | None, user_id: str | None) -> None:
        """Remember the signed-in user of ``client_id`` (None: signed out), for later runs too."""
        users.set_user(self._db, client_id, tenant_id, user_id)

    @gated
    def load_user(self, client_id: str) -> tuple[str | None, str | None]:
        """(tenant_id, user_id) stored by :meth:`set_user`; (None, None) if none (or unreadable)."""
        return users.load_user(self._db, client_id)

    @gated
    def add_to_ledger(self, counts: Mapping[str, int]) -> None:
        """Add ``counts`` to the folder's ledger: names as in ``ledger.py`` (``"dropped/closed"``).

        For the handler, which drops events before they reach the store (a
        bad field, a full buffer, close). In a transaction of its own, or in
        the caller's when called inside one (diskcache's are reentrant), so
        the counts change with the rows they are about. Raises ``ValueError``
        for a name the ledger does not have, and for a negative count.

        >>> import tempfile
        >>> q = Queue(tempfile.mkdtemp())
        >>> q.add_to_ledger({"dropped/invalid": 2})
        >>> q.ledger().dropped
        {'invalid': 2}
        >>> q.close()
        """
        self._books.add(counts)

    @gated
    def ledger(self) -> Ledger:
        """The folder's lifetime counts (every process's; see ``ledger.py``)."""
        return self._books.ledger()

    @gated
    def pending_count(self) -> int:
        """Unsent events (leased ones included)."""
        return self._counters.get(PENDING)

    @gated
    def pending_bytes(self) -> int:
        """Bytes of the unsent payloads."""
        return self._counters.get(PENDING_BYTES)

    @gated
    def rejected_count(self) -> int:
        """Events set aside after the collector refused them (400, 413)."""
        return self._counters.get(REJECTED)

    @gated
    def aside_count(self) -> int:
        """Rows moved to ``x/`` because they could not be used."""
        return self._counters.get(ASIDE)

    @gated
    def last_sync(self) -> float:
        """Epoch seconds of the last 200 (or of the queue's creation)."""
        return self._counters.last_sync()

    # -- looking (store/reading.py, store/damage.py) -------------------------------

    @gated
    def sessions(self) -> list[SessionInfo]:
        """Per session: unsent and leased events, bytes and the oldest ``nr``."""
        return reading.sessions(self._db)

    @gated
    def unsent_ranges(self, session: str) -> list[tuple[int, int]]:
        """(first nr, last nr) of every unsent chunk of ``session`` (leased ones included)."""
        return reading.unsent_ranges(self._db, session)

    @gated
    def fates(self, session: str, ranges: Sequence[tuple[int, int]]) -> list[Fate]:
        """Where the events of each ``(first, last)`` range of ``session`` are now.

        For a handler's ``flush()``: the numbers it stored (``Appended``) are
        delivered once none of them is pending, rejected or set aside (see
        :class:`Fate`). Events the store dropped never got a stored number:
        ``Appended.dropped`` counts them when they are appended. Reads only.

        >>> import tempfile
        >>> from hamustro_logging.wire import Event
        >>> q = Queue(tempfile.mkdtemp())
        >>> hid = q.register_header("s", b"\\x0a\\x01d")
        >>> q.append("s", hid, [Event(1, b"a"), Event(2, b"b"), Event(3, b"c")]).last_nr
        3
        >>> batch = q.claim("me", lease_seconds=60)
        >>> q.settle(batch, [True, "400", None]).rejected
        1
        >>> q.fates("s", [(1, 3)])
        [Fate(first=1, last=3, pending=1, rejected=1, set_aside=0)]
        >>> q.close()
        """
        return reading.fates(self._db, session, ranges)

    @gated
    def iter_events(self, rejected: bool = False) -> Iterator[tuple[str, bytes, int, bytes]]:
        """(session, header, nr, framed payload) of every pending (or rejected) event."""
        return iter(reading.iter_events(self._db, rejected))

    @gated
    def iter_aside(self) -> Iterator[tuple[str, bytes]]:
        """(original key, raw bytes) of every row set aside."""
        return iter(self._damage.iter_aside())

    # -- the rows themselves, for tests that tamper with them -------------------------

    @property
    def _cache(self) -> diskcache.Cache:
        return self._db.cache

    def _transaction(self) -> AbstractContextManager[None]:
        return self._db.transaction()

    def _keys_with(self, prefix: str) -> Iterator[str]:
        return self._db.keys_with(prefix)
