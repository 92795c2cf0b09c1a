"""A read-only view of a queue folder, for the CLI's ``status`` and ``export`` (and tests).

It reads diskcache's ``Cache`` table with plain ``sqlite3``, never through
``diskcache.Cache``, whose constructor writes its settings (eviction policy,
cull limit...) into whatever folder it is given, and never unpickles. It
writes nothing, so it works on a read-only mount and leaves another
application's folder as it found it:

* a folder at rest (no ``cache.db-wal``: everything is in ``cache.db``) is
  opened with ``immutable=1``: SQLite then takes no lock and creates no
  ``-wal``/``-shm`` file (a ``mode=ro`` connection would create both);
* a folder in use (``cache.db-wal`` exists) is opened with ``mode=ro``, so the
  events still in the write-ahead log are seen; SQLite then updates only the
  shared-memory index in ``cache.db-shm`` that every reader of the folder uses.

:func:`recognise` tells a hamustro queue from anything else (no
``cache.db``, diskcache settings or keys that are not the queue's) without
writing; the CLI's writing commands call it before they open the folder.

Values are read as diskcache stores them: inline (``bytes``, ``str``,
``int``), or, in folders written by versions that kept values of 1 MiB or
more in files of their own, from that file (opened with ``O_NOFOLLOW``).
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import diskcache.core

from .folder import DB_FILES
from .journal import JOURNAL_DIR, SUFFIX
from .ledger import LEDGER_PREFIX, Ledger
from .payload_pb2 import Collection as Collection1
from .payload_pb2 import Payload as Payload1
from .payload_v2_pb2 import Collection as Collection2
from .payload_v2_pb2 import Environment
from .payload_v2_pb2 import Payload as Payload2
from .store.errors import QueueCorrupt
from .store.keys import (
    KEY_PREFIXES,
    LAST_SYNC,
    PENDING,
    PENDING_BYTES,
    REJECTED,
    journal_position,
    parse_chunk_key,
)
from .store.reading import summarize_sessions
from .store.records import SessionInfo
from .wire import frame_schema, iter_frames

__all__ = [
    "DestinationInfo",
    "NotAQueue",
    "QueueReader",
    "decode_payload",
    "event_record",
    "recognise",
]

#: The first characters of every key the queue writes (see store/keys.py's table).
_KEY_PREFIXES = KEY_PREFIXES
#: A key no queue writes: one "?" per prefix.
_FOREIGN_KEY = (
    "SELECT key FROM Cache WHERE raw != 1 OR typeof(key) != 'text' OR substr(key, 1, 2) "
    "NOT IN (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) LIMIT 1"
)
if _FOREIGN_KEY.count("?") != len(_KEY_PREFIXES):  # one "?" per prefix of the key table
    raise ImportError("reader.py's foreign-key query does not list every key prefix")
#: What a mover renames a damaged journal segment to (spool.py).
_DAMAGED = SUFFIX + ".damaged"
#: Written by every Queue at every open; a folder without it was never one.
_MARKER = LAST_SYNC
#: The diskcache settings every Queue writes at every open, that diskcache's
#: defaults do not have.
_OUR_SETTINGS = {"eviction_policy": "none", "cull_limit": 0}


@dataclass(frozen=True)
class DestinationInfo:
    """Pending events bound to one destination (``tracker.destination_id``), for ``status``.

    ``rebound_to``: ``rebind`` moved this destination's events to that one;
    what is pending here was logged after it (an app still running with the
    old configuration), and another ``rebind`` moves it too.
    """

    destination: str | None
    pending: int
    sessions: tuple[str, ...]
    rebound_to: str | None


class NotAQueue(ValueError):
    """The folder is not a hamustro-logging queue (nothing in it was changed)."""


def _connect(directory: str) -> sqlite3.Connection:
    """A connection that cannot write to the folder, or NotAQueue if it has no database."""
    db = os.path.join(directory, DB_FILES[0])
    try:
        st = os.lstat(db)
    except FileNotFoundError:
        raise NotAQueue(f"{directory} is not a queue folder: it has no {DB_FILES[0]}") from None
    if not stat.S_ISREG(st.st_mode):
        raise NotAQueue(f"{directory} is not a queue folder: its {DB_FILES[0]} is not a file")
    in_use = os.path.lexists(db + "-wal")
    uri = f"file:{quote(db)}?{'mode=ro' if in_use else 'immutable=1'}"
    con = sqlite3.connect(uri, uri=True, timeout=10.0, isolation_level=None)
    con.execute("PRAGMA query_only = 1")
    return con


def recognise(con: sqlite3.Connection, directory: str) -> None:
    """Raise :class:`NotAQueue` unless the database is a hamustro-logging queue's."""
    try:
        settings = dict(con.execute("SELECT key, value FROM Settings").fetchall())
        foreign = con.execute(_FOREIGN_KEY, _KEY_PREFIXES).fetchone()
        marker = con.execute("SELECT 1 FROM Cache WHERE key = ? AND raw = 1", (_MARKER,)).fetchone()
    except sqlite3.DatabaseError as exc:
        if "no such table" in str(exc) or "not a database" in str(exc):
            raise NotAQueue(f"{directory} is not a queue folder: {exc}") from None
        raise
    for name, value in _OUR_SETTINGS.items():
        if settings.get(name) != value:
            raise NotAQueue(
                f"{directory} is not a hamustro-logging queue: its diskcache setting "
                f"{name} is {settings.get(name)!r}, a queue's is {value!r}"
            )
    if foreign is not None:
        raise NotAQueue(
            f"{directory} is not a hamustro-logging queue: it holds the key "
            f"{str(foreign[0])[:60]!r}, which a queue never writes"
        )
    if marker is None:
        raise NotAQueue(f"{directory} is not a hamustro-logging queue: it has no {_MARKER!r}")


def check_is_queue(directory: str | os.PathLike[str]) -> None:
    """Raise :class:`NotAQueue` unless ``directory`` holds a queue; writes nothing."""
    with QueueReader(directory):
        pass


class QueueReader:
    """The read-only side of :class:`~hamustro_logging.queue.Queue`, on one folder.

    Same answers as the Queue's counters and ``iter_events``; raises
    :class:`NotAQueue` if the folder is not a queue. One thread only.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = os.path.abspath(directory)
        self._con = _connect(self.directory)
        try:
            recognise(self._con, self.directory)
        except BaseException:
            self._con.close()
            raise

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> QueueReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- rows ------------------------------------------------------------------

    def _value(self, row: tuple[int, str | None, Any] | None) -> Any:
        """A row's value as diskcache's ``get`` returns it (never unpickled)."""
        if row is None:
            return None
        mode, filename, value = row
        if mode == diskcache.core.MODE_RAW:
            return value
        if mode in (diskcache.core.MODE_BINARY, diskcache.core.MODE_TEXT) and filename:
            data = self._read_value_file(filename)
            return data if mode == diskcache.core.MODE_BINARY else data.decode("utf-8")
        if mode == diskcache.core.MODE_PICKLE:
            raise QueueCorrupt("queue file holds a pickled value; refusing to unpickle it")
        return None

    def _read_value_file(self, filename: str) -> bytes:
        parts = filename.split("/")
        if os.path.isabs(filename) or ".." in parts:
            raise QueueCorrupt(f"queue names a value file outside its folder: {filename[:60]!r}")
        fd = os.open(
            os.path.join(self.directory, *parts), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        )
        with os.fdopen(fd, "rb") as file:
            return file.read()

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` (unexpired), or ``default``."""
        row = self._con.execute(
            "SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1 "
            "AND (expire_time IS NULL OR expire_time > ?)",
            (key, time.time()),
        ).fetchone()
        value = self._value(row)
        return default if value is None else value

    def keys_with(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix``, in the order diskcache's ``iterkeys`` gives."""
        rows = self._con.execute(
            "SELECT key FROM Cache WHERE raw = 1 AND typeof(key) = 'text' "
            "AND substr(key, 1, ?) = ? ORDER BY key",
            (len(prefix), prefix),
        )
        return [key for (key,) in rows]

    # -- what status and export read -------------------------------------------

    def _int(self, key: str) -> int:
        """A counter; a row that is not an int (tampered) reads as 0: a writer rebuilds it."""
        try:
            value = self.get(key, 0)
        except QueueCorrupt:
            return 0
        return value if type(value) is int else 0

    def pending_count(self) -> int:
        return self._int(PENDING)

    def pending_bytes(self) -> int:
        return self._int(PENDING_BYTES)

    def rejected_count(self) -> int:
        return self._int(REJECTED)

    def journal_moved_to(self) -> dict[str, int | None]:
        """How far the store moved each journal segment (its offset); None once finished."""
        out: dict[str, int | None] = {}
        for key in self.keys_with("j/"):
            try:
                value = self.get(key)
            except QueueCorrupt:
                continue
            if type(value) is int:
                position = journal_position(value)
                out[key[2:]] = None if position is None else position[0]
        return out

    def aside_count(self) -> int:
        """Rows set aside as unusable (``x/``)."""
        return len(self.keys_with("x/"))

    def newest_row(self, prefix: str) -> float | None:
        """Epoch seconds the newest row whose key starts with ``prefix`` was written, or None.

        diskcache's own ``store_time`` column: for ``x/`` when the newest row
        was set aside, for ``r/`` when the collector last refused an event
        (``status --check``).
        """
        row = self._con.execute(
            "SELECT max(store_time) FROM Cache WHERE raw = 1 AND typeof(key) = 'text' "
            "AND substr(key, 1, ?) = ?",
            (len(prefix), prefix),
        ).fetchone()
        value = row[0] if row else None
        return float(value) if isinstance(value, (int, float)) else None

    def set_aside_files(self) -> list[tuple[str, float]]:
        """(name, epoch seconds set aside) of the folder's files set aside as damaged.

        Journal segments renamed ``*.jnl.damaged`` by a mover and databases
        SQLite called corrupt (``cache.db.corrupt-<ns>``); the time is the
        file's last change of status (a rename sets it). Lists folders only.
        """
        found: list[tuple[str, float]] = []
        corrupt = DB_FILES[0] + ".corrupt-"
        places: tuple[tuple[str, Callable[[str], bool]], ...] = (
            # the database itself, not its -wal and -shm files
            (self.directory, lambda name: name.removeprefix(corrupt).isdigit()),
            (os.path.join(self.directory, JOURNAL_DIR), lambda name: name.endswith(_DAMAGED)),
        )
        for folder, wanted in places:
            try:
                names = os.listdir(folder)
            except OSError:  # no journal folder yet
                continue
            for name in names:
                if wanted(name):
                    try:
                        st = os.lstat(os.path.join(folder, name))
                    except OSError:  # removed meanwhile
                        continue
                    if stat.S_ISREG(st.st_mode):
                        shown = name if folder == self.directory else f"{JOURNAL_DIR}/{name}"
                        found.append((shown, st.st_ctime))
        return sorted(found)

    def iter_aside(self) -> Iterator[tuple[str, bytes]]:
        """(original key, raw bytes) of every row set aside (nothing is unpickled)."""
        for key in self.keys_with("x/"):
            row = self._con.execute(
                "SELECT value FROM Cache WHERE key = ? AND raw = 1", (key,)
            ).fetchone()
            value = row[0] if row else b""
            yield key[2:], value if isinstance(value, bytes) else str(value).encode()

    def last_sync(self) -> float:
        return self._int(_MARKER) / 1000

    def ledger(self) -> Ledger:
        """The folder's lifetime counts (``ledger.py``), as a writer reads them."""
        rows: dict[str, object] = {}
        for key in self.keys_with(LEDGER_PREFIX):
            try:
                rows[key] = self.get(key)
            except QueueCorrupt:
                continue
        return Ledger.from_rows(rows)

    def destinations(self) -> list[DestinationInfo]:
        """Pending events per destination they are bound to (a folder usually has one)."""
        bound: dict[tuple[str, str], str | None] = {}
        pending: dict[str | None, int] = {}
        sessions: dict[str | None, set[str]] = {}
        for key in self.keys_with("e/"):
            parsed = parse_chunk_key(key)
            if parsed is None:
                continue
            group = parsed[:2]
            if group not in bound:
                try:
                    value = self.get(f"d/{group[0]}/{group[1]}")
                except QueueCorrupt:
                    value = None
                bound[group] = value if isinstance(value, str) else None
            destination = bound[group]
            pending[destination] = pending.get(destination, 0) + parsed[3]
            sessions.setdefault(destination, set()).add(group[0])
        out = []
        for destination in sorted(pending, key=lambda d: (d is None, d or "")):
            rebound = None
            if destination is not None:
                try:
                    marker = self.get(f"d/rebound/{destination}")
                except QueueCorrupt:
                    marker = None
                rebound = marker if isinstance(marker, str) else None
            out.append(
                DestinationInfo(
                    destination,
                    pending[destination],
                    tuple(sorted(sessions[destination])),
                    rebound,
                )
            )
        return out

    def last_numbers(self) -> dict[str, int]:
        return {key[2:]: self._int(key) for key in self.keys_with("n/")}

    def sessions(self) -> list[SessionInfo]:
        """Per session: unsent and leased events, bytes and the oldest ``nr``."""
        rows = self._con.execute(
            "SELECT key, length(value) FROM Cache WHERE raw = 1 AND typeof(key) = 'text' "
            "AND key > 'e/' AND key < 'e0'"
        )
        return summarize_sessions(rows, self.get)

    def iter_events(self, rejected: bool = False) -> Iterator[tuple[str, bytes, int, bytes]]:
        """(session, header, nr, framed payload) of every pending (or rejected) event.

        Rows that cannot be read are left out (a writer sets them aside).
        """
        for key in self.keys_with("r/" if rejected else "e/"):
            parsed = parse_chunk_key(key)
            if parsed is None:
                continue
            session, hid, first, _ = parsed
            try:
                value, header = self.get(key), self.get(f"h/{session}/{hid}")
                frames = list(iter_frames(value)) if isinstance(value, bytes) else []
            except (QueueCorrupt, ValueError, IndexError):
                continue
            if isinstance(header, bytes):
                for i, frame in enumerate(frames):
                    yield session, header, first + i, frame


# -- decoding stored events (export, and hamustro_logging.testing) -------------------


def decode_payload(frame: bytes) -> Payload1 | Payload2:
    """Decode one stored frame (a ``Collection.payloads`` entry: tag, length, Payload).

    A frame is a valid ``Collection`` with one payload, so protobuf strips
    the prefix; its tag says the schema.

    >>> from hamustro_logging.wire import Event, Event2, encode_payload, encode_payloads_v2
    >>> decode_payload(encode_payload(Event(1454514088, b"signup"), 7)).nr
    7
    >>> decode_payload(encode_payloads_v2([Event2(1454514088, b"signup")], 8)[0]).nr
    8
    """
    if frame_schema(frame) == 2:
        return Collection2.FromString(frame).payloads[0]
    return Collection1.FromString(frame).payloads[0]


def _text(value: str | bytes) -> str:
    # upb may hand back bytes for a string field holding invalid UTF-8.
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def event_record(session: str, header: bytes, nr: int, frame: bytes) -> dict[str, Any]:
    """A stored event as ``export`` prints it: the payload's fields and its header's.

    Takes what :meth:`QueueReader.iter_events` yields. Raises ``DecodeError``,
    ``IndexError`` or ``ValueError`` for bytes that are not a stored event.
    """
    if frame_schema(frame) == 2:
        return _event_record_v2(session, header, nr, frame)
    collection = Collection1.FromString(header + frame)
    payload = collection.payloads[0]
    has = payload.HasField
    optional = collection.HasField
    return {
        "session": session,
        "nr": nr,
        "at": payload.at,
        "event": _text(payload.event),
        "user_id": payload.user_id if has("user_id") else None,
        "ip": _text(payload.ip) if has("ip") else None,
        "parameters": _text(payload.parameters) if has("parameters") else None,
        "is_testing": payload.is_testing,
        "device_id": _text(collection.device_id),
        "client_id": _text(collection.client_id),
        "system_version": _text(collection.system_version),
        "product_version": _text(collection.product_version),
        "system": _text(collection.system) if optional("system") else None,
        "product_git_hash": (
            _text(collection.product_git_hash) if optional("product_git_hash") else None
        ),
    }


def _event_record_v2(session: str, header: bytes, nr: int, frame: bytes) -> dict[str, Any]:
    """One exported schema-2 event: ``parameters`` as a JSON object, ``env`` by name."""
    collection = Collection2.FromString(header + frame)
    payload = collection.payloads[0]
    has = payload.HasField
    optional = collection.HasField
    line: dict[str, Any] = {
        "schema": 2,
        "session": session,
        "nr": nr,
        "at": payload.at,
        "event": _text(payload.event),
    }
    for name in ("timezone", "tenant_id", "user_id", "ip", "country"):
        line[name] = _text(getattr(payload, name)) if has(name) else None
    line["parameters"] = {_text(p.name): _text(p.value) for p in payload.parameters}
    line["env"] = Environment.Name(collection.env)
    for name in ("device_id", "client_id", "system_version", "product_version"):
        line[name] = _text(getattr(collection, name))
    for name in (
        "device_make", "device_model", "system", "system_language", "browser",
        "browser_version", "product_git_hash", "product_language",
    ):  # fmt: skip
        line[name] = _text(getattr(collection, name)) if optional(name) else None
    return line
