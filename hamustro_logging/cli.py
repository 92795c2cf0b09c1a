"""The ``hamustro-logging`` command: look into a queue folder, send it, test a collector.

Subcommands (each has ``--help``):

``status``
    Per session: pending, leased and rejected events, the age of the oldest
    pending event and the last ``nr``; for the folder: the last sync, bytes
    on disk and pending bytes. A table, or one JSON document with ``--json``;
    ``--check``: one line and exit 0 OK, 1 WARNING, 2 CRITICAL (the rules are
    :mod:`hamustro_logging.health`'s); ``--prometheus``: the Prometheus text.
``flush``
    Send everything pending in the folder that is bound to the given collector
    and key (every session, each with its own stored header), with a progress
    bar on a terminal; exit 0 if nothing is left.
``send-test``
    Send one test event straight to the collector (not through the queue)
    and say in plain words what the answer means; first find out which
    schema the collector speaks, and say so if it is not the configured one.
``export``
    Print every pending (or, with ``--rejected``, rejected) event as one JSON
    line; a schema-2 line has ``"schema": 2``, its parameters as a JSON
    object and its env by name.
``retry-rejected``
    Move the events the collector refused with 400 back to pending.
``collector``
    Run the local development collector (``python -m hamustro_logging.collector``).

``status``, ``export`` and ``retry-rejected`` take the folder (``--queue-dir``)
or the ``client_id`` whose default folder to use (``--client-id``). ``flush``
takes the folder, the collector's URL and the secret (and ``--timeout``,
``--headers``); ``send-test`` the tracker's configuration. Every option falls back
to the ``HAMUSTRO_<NAME>`` environment variable. The command never creates a
queue folder, and it never prints the shared secret.

``status`` and ``export`` only read: they open the folder through
:class:`~hamustro_logging.reader.QueueReader`, which writes nothing (a
read-only mount is fine) and refuses a folder that is not a hamustro queue.
``flush`` and ``retry-rejected`` check the same before they open the folder
for writing. A password in ``collector_url`` is never printed.

Exit codes: 0 success, 1 the operation failed or left something unsent, 2 a
usage or configuration error. The CLI holds no business logic of its own: it
calls :class:`~hamustro_logging.queue.Queue`,
:class:`~hamustro_logging.delivery.Delivery`,
:class:`~hamustro_logging.reader.QueueReader` and
:class:`~hamustro_logging.transport.Transport`.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import diskcache
import diskcache.core
from google.protobuf.message import DecodeError

from . import agent, collector
from ._version import __version__
from .config import (
    check_schema,
    default_device_id,
    default_system_language,
    default_system_version,
)
from .delivery import Delivery
from .health import Limits, age_text, check, prometheus
from .mapping import EventError, build_event, build_event_v2
from .queue import Queue, QueueCorrupt
from .reader import NotAQueue, QueueReader, check_is_queue, decode_payload, event_record
from .report import Reporter
from .spool import Spool
from .stats import Stats
from .tracker import SCHEMA2_OPTIONS, accepted_destinations, default_queue_dir, destination_id
from .transport import Answer, Transport, check_headers, track_url
from .wire import (
    collection_header,
    collection_header_v2,
    encode_payload,
    encode_payloads_v2,
    environment,
    frame_schema,
    session_id,
    session_id_v2,
    sha256hex,
)

__all__ = ["build_parser", "main"]

PROG = "hamustro-logging"
PREFIX = f"{PROG}: "

#: A progress bar is worth drawing only when flushing takes a while.
PROGRESS_MIN_EVENTS = 1000

#: Errors reading a queue folder: permissions, a locked or damaged database.
_QUEUE_ERRORS = (OSError, sqlite3.Error, QueueCorrupt, diskcache.Timeout)


class UsageError(Exception):
    """A usage or configuration error: one line on stderr, exit code 2."""


class Failure(Exception):
    """The operation failed: one line on stderr, exit code 1."""


# -- configuration ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Setting:
    """One tracker option: its ``--flag``, its environment variable, whether required."""

    name: str
    required: bool
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "HAMUSTRO_" + self.name.upper()


_SETTINGS = (
    _Setting("collector_url", True, "the collector's base URL"),
    _Setting(
        "shared_secret_key",
        True,
        "signs each request; prefer the environment variable, an argument shows in `ps`",
    ),
    _Setting(
        "device_id", False, "the raw device id, hashed with SHA-256 (default: this machine's id)"
    ),
    _Setting("client_id", True, "the client id"),
    _Setting(
        "system_version", False, "the system version (default: the platform's, e.g. Linux 6.1)"
    ),
    _Setting("product_version", True, "the product version"),
    _Setting("queue_dir", False, "the queue folder (default: the client_id's default folder)"),
    _Setting("timeout", False, "seconds, or CONNECT,READ seconds (default 3.05,10)"),
    _Setting("schema", False, "the collector's schema: 1 (default) or 2"),
    _Setting("env", False, "schema 2 only, required there: an Environment name or number 0-11"),
    _Setting("device_make", False, "schema 2 only"),
    _Setting("device_model", False, "schema 2 only"),
    _Setting("system_language", False, "schema 2 only (default: the locale's, e.g. en-US)"),
    _Setting("browser", False, "schema 2 only"),
    _Setting("browser_version", False, "schema 2 only"),
    _Setting("product_language", False, "schema 2 only"),
    _Setting(
        "headers",
        False,
        "extra HTTP headers as a JSON object, e.g. for a proxy; "
        "prefer the environment variable, an argument shows in `ps`",
    ),
)


#: What ``flush`` needs: where the folder is, and the collector and key its events
#: are bound to. Each stored session is sent with its own stored header, so
#: none of the collection fields (product_version, schema, env...) is asked for.
_FLUSH_SETTINGS = (
    *(s for s in _SETTINGS if s.name in ("collector_url", "shared_secret_key", "queue_dir")),
    _Setting(
        "client_id", False, "use the default queue folder of this client_id (and collector URL)"
    ),
    *(s for s in _SETTINGS if s.name in ("timeout", "headers")),
)


def _add_config_options(
    parser: argparse.ArgumentParser, settings: tuple[_Setting, ...] = _SETTINGS
) -> None:
    group = parser.add_argument_group(
        "configuration", "Each option defaults to its environment variable, shown in brackets."
    )
    for setting in settings:
        group.add_argument(
            setting.flag,
            dest=setting.name,
            metavar=setting.name.upper(),
            help=f"{setting.help} [${setting.env}]",
        )


def _config(args: argparse.Namespace, settings: tuple[_Setting, ...] = _SETTINGS) -> dict[str, str]:
    """Every given setting of ``settings``, from its option or else its environment variable.

    Raises :class:`UsageError` naming each missing required option and its
    variable, or what is wrong with the collector URL or the headers
    (never their secret parts). Variables of other settings are not read.
    """
    values: dict[str, str] = {}
    missing: list[str] = []
    for setting in settings:
        value = getattr(args, setting.name) or os.environ.get(setting.env) or ""
        if value:
            values[setting.name] = value
        elif setting.required:
            missing.append(f"{setting.flag} (or set {setting.env})")
    if missing:
        raise UsageError("missing configuration: " + ", ".join(missing))
    for name, value in values.items():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(f"{name} is not valid Unicode") from None
    _check_url(values["collector_url"])
    try:
        _headers(values)
    except json.JSONDecodeError as exc:  # its message has a position, never the text
        raise UsageError(f"--headers (or HAMUSTRO_HEADERS) is not a JSON object ({exc})") from None
    except (TypeError, ValueError) as exc:  # check_headers never shows a value
        raise UsageError(str(exc)) from None
    return values


def _headers(config: dict[str, str]) -> dict[str, str] | None:
    """The ``--headers`` JSON object, checked (:func:`check_headers`); None if not given."""
    if "headers" not in config:
        return None
    return check_headers(json.loads(config["headers"]))


def _tracker_config(args: argparse.Namespace) -> dict[str, str]:
    """The whole tracker configuration (``send-test``): :func:`_config` and the schema's rules."""
    values = _config(args)
    values.setdefault("device_id", default_device_id())
    values.setdefault("system_version", default_system_version())
    try:
        schema = check_schema(values.get("schema", "1"))
        if schema == 1:
            given = [name for name in SCHEMA2_OPTIONS if name in values]
            if given:
                flag = "--" + given[0].replace("_", "-")
                raise ValueError(
                    f"{flag} exists only in schema 2; this configuration uses schema 1: "
                    "say --schema 2 (or set HAMUSTRO_SCHEMA=2)"
                )
        elif "env" not in values:
            raise ValueError("schema 2 needs --env (or HAMUSTRO_ENV): a name such as beta, or 0-11")
        else:
            environment(values["env"])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return values


def _check_url(url: str) -> None:
    """UsageError unless ``url`` is an http(s) URL with a host and a valid port.

    The message never shows a password (see :func:`_shown_url`).
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError as exc:
        raise UsageError(f"collector_url {_shown_url(url)!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UsageError(
            f"collector_url must be an http:// or https:// URL, got {_shown_url(url)!r}"
        )
    if not parts.hostname:
        raise UsageError(f"collector_url {_shown_url(url)!r} has no host name")


def _timeout(config: dict[str, str]) -> tuple[float, float]:
    """The (connect, read) timeout from ``--timeout``.

    >>> _timeout({"timeout": "2"}), _timeout({"timeout": "1,5.5"}), _timeout({})
    ((2.0, 2.0), (1.0, 5.5), (3.05, 10.0))
    """
    text = config.get("timeout")
    if text is None:
        return (3.05, 10.0)
    try:
        parts = [float(part) for part in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or not all(0 < part < float("inf") for part in parts):
        raise UsageError(
            f"--timeout (or HAMUSTRO_TIMEOUT) must be seconds > 0 or CONNECT,READ, got {text!r}"
        )
    return parts[0], parts[1]


def _shown_url(url: str) -> str:
    """``url`` without its ``user:password@`` part, for messages, however malformed.

    >>> _shown_url("https://user:pw@host:8443/x"), _shown_url("ftp://bob:hunter2@host")
    ('https://***@host:8443/x', 'ftp://***@host')
    >>> _shown_url("bob:hunter2@host"), _shown_url("http://h[ost/x")
    ('***@host', 'http://h[ost/x')
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    netloc = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if "@" not in netloc:
        return url
    return f"{scheme}{sep}***@{rest[len(netloc.rsplit('@', 1)[0]) + 1 :]}"


# -- the queue folder ------------------------------------------------------------------


def _add_queue_options(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--queue-dir", metavar="DIR", help="the queue folder [$HAMUSTRO_QUEUE_DIR]")
    where.add_argument(
        "--client-id",
        metavar="ID",
        help="use the default queue folder of this client_id [$HAMUSTRO_CLIENT_ID]",
    )


def _queue_dir(
    queue_dir: str | None, client_id: str | None, collector_url: str | None = None
) -> Path:
    """The folder: ``--queue-dir``, ``--client-id``, $HAMUSTRO_QUEUE_DIR, $HAMUSTRO_CLIENT_ID.

    The default folder of a client id also depends on the collector's URL
    (``collector_url`` or $HAMUSTRO_COLLECTOR_URL).
    """
    queue_dir = queue_dir or (None if client_id else os.environ.get("HAMUSTRO_QUEUE_DIR"))
    client_id = client_id or os.environ.get("HAMUSTRO_CLIENT_ID")
    if queue_dir:
        return Path(queue_dir)
    collector_url = collector_url or os.environ.get("HAMUSTRO_COLLECTOR_URL")
    if client_id and collector_url:
        return default_queue_dir(client_id, collector_url)
    if client_id:
        raise UsageError(
            "the default queue folder of a client_id depends on the collector too: "
            "set HAMUSTRO_COLLECTOR_URL, or say --queue-dir DIR"
        )
    raise UsageError(
        "say which queue: --queue-dir DIR or --client-id ID "
        "(or set HAMUSTRO_QUEUE_DIR or HAMUSTRO_CLIENT_ID)"
    )


def _existing_queue(directory: Path) -> Path:
    """``directory`` if it holds a queue; otherwise UsageError (opening one would create it)."""
    if not directory.is_dir():
        raise UsageError(f"no queue folder at {directory} (nothing was created)")
    if not (directory / diskcache.core.DBNAME).is_file():
        raise UsageError(f"{directory} is not a queue folder: it has no {diskcache.core.DBNAME}")
    return directory


def _refuse_foreign(directory: Path) -> None:
    """UsageError unless ``directory`` holds a hamustro queue; reads only, writes nothing."""
    try:
        check_is_queue(directory)
    except NotAQueue as exc:
        raise UsageError(f"{exc}; nothing was changed") from None
    except _QUEUE_ERRORS as exc:
        raise Failure(f"cannot read the queue in {directory}: {exc}") from None


@contextlib.contextmanager
def _read_queue(directory: Path) -> Iterator[QueueReader]:
    """Open an existing queue folder read-only; errors reading it become :class:`Failure`."""
    _existing_queue(directory)
    try:
        reader = QueueReader(directory)
    except NotAQueue as exc:
        raise UsageError(f"{exc}; nothing was changed") from None
    except _QUEUE_ERRORS as exc:
        raise Failure(f"cannot open the queue in {directory}: {exc}") from None
    try:
        yield reader
    except BrokenPipeError:
        raise  # stdout's reader is gone: not the queue's fault
    except _QUEUE_ERRORS as exc:
        raise Failure(f"cannot read the queue in {directory}: {exc}") from None
    finally:
        reader.close()


@contextlib.contextmanager
def _open_queue(directory: Path, notify: Callable[[str], None] | None = None) -> Iterator[Queue]:
    """Open an existing queue folder to change it; a foreign folder is left untouched.

    ``notify`` gets the queue's notices (a damaged row set aside...).
    """
    _existing_queue(directory)
    _refuse_foreign(directory)
    try:
        queue = Queue(directory, notify=notify)
    except _QUEUE_ERRORS as exc:
        raise Failure(f"cannot open the queue in {directory}: {exc}") from None
    try:
        yield queue
    except BrokenPipeError:
        raise  # stdout's reader is gone: not the queue's fault
    except _QUEUE_ERRORS as exc:
        raise Failure(f"cannot read the queue in {directory}: {exc}") from None
    finally:
        queue.close()


def _utc(epoch: float) -> str | None:
    """ISO 8601 UTC, whole seconds.

    >>> _utc(1454514088)
    '2016-02-03T15:41:28Z'
    """
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    except (OverflowError, OSError, ValueError):
        return None


def _folder_bytes(directory: Path) -> int:
    """Sum of the sizes of the files in ``directory`` (diskcache nests large values)."""
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):  # removed meanwhile
                total += os.path.getsize(os.path.join(root, name))
    return total


# -- status ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionStatus:
    """One row of ``status``."""

    session: str
    schema: int | None
    pending: int
    leased: int
    rejected: int
    oldest_nr: int | None
    oldest_at: int | None
    last_nr: int | None


def _oldest_at(
    queue: QueueReader, oldest_nr: dict[str, int], schemas: dict[str, int]
) -> dict[str, int]:
    """``at`` of each session's oldest pending event, reading no further than needed.

    Chunks are stored sorted by session, header and ``nr``, so the scan
    stops as soon as every session's oldest event was seen. Each session's
    schema goes into ``schemas``.
    """
    found: dict[str, int] = {}
    if not oldest_nr:
        return found
    for session, _, nr, frame in queue.iter_events():
        if oldest_nr.get(session) == nr:
            found[session] = decode_payload(frame).at
            schemas[session] = frame_schema(frame)
            if len(found) == len(oldest_nr):
                break
    return found


def _status(queue: QueueReader, directory: Path) -> dict[str, Any]:
    """The ``status --json`` document."""
    now = time.time()
    infos = {info.session: info for info in queue.sessions()}
    schemas: dict[str, int] = {}
    rejected: collections.Counter[str] = collections.Counter()
    for session, _, _, frame in queue.iter_events(rejected=True):
        rejected[session] += 1
        schemas.setdefault(session, frame_schema(frame))
    last = queue.last_numbers()
    oldest = _oldest_at(queue, {s: info.oldest_nr for s, info in infos.items()}, schemas)
    rows = []
    for session in sorted(set(infos) | set(rejected)):
        info = infos.get(session)
        at = oldest.get(session)
        row = SessionStatus(
            session=session,
            schema=schemas.get(session),
            pending=info.pending if info else 0,
            leased=info.leased if info else 0,
            rejected=rejected[session],
            oldest_nr=info.oldest_nr if info else None,
            oldest_at=at,
            last_nr=last.get(session),
        )
        rows.append(
            asdict(row)
            | {
                "oldest_at_utc": None if at is None else _utc(at),
                "oldest_age_seconds": None if at is None else round(now - at, 3),
            }
        )
    last_sync = queue.last_sync()
    pending = queue.pending_count()
    ledger = queue.ledger()
    destinations = queue.destinations()
    after_rebind = sum(d.pending for d in destinations if d.rebound_to is not None)
    oldest_at = min(oldest.values(), default=None)
    files_aside = queue.set_aside_files()
    aside_times = [t for _, t in files_aside]
    newest_aside_row = queue.newest_row("x/")
    if newest_aside_row is not None:
        aside_times.append(newest_aside_row)
    return {
        "queue_dir": str(directory),
        "pending": pending,
        "pending_bytes": queue.pending_bytes(),
        "oldest_pending_age_seconds": None if oldest_at is None else round(now - oldest_at, 3),
        # The ledger: every process's lifetime counts (docs/stats.md).
        **ledger.as_dict(),
        "unaccounted": ledger.unaccounted(pending),
        "rejected_in_queue": queue.rejected_count(),
        "aside_in_queue": queue.aside_count(),
        "set_aside_files": [name for name, _ in files_aside],
        "last_set_aside": max(aside_times, default=None),
        "last_rejected": queue.newest_row("r/"),
        "waiting_after_rebind": after_rebind,
        "rebind_command": _rebind_command(directory) if after_rebind else None,
        "destinations": [asdict(d) | {"sessions": list(d.sessions)} for d in destinations],
        "bytes_on_disk": _folder_bytes(directory),
        "disk_free_bytes": _disk_free(directory),
        "last_sync": last_sync,
        "last_sync_utc": _utc(last_sync),
        "last_sync_age_seconds": round(now - last_sync, 3),
        "sessions_seen": len(last),
        "sessions": rows,
    }


def _rebind_command(directory: Path) -> str:
    """What moves events left for a rebound destination (the new key and headers from the env)."""
    return f"hamustro-logging rebind --queue-dir {directory} --collector-url URL"


def _reasons(by_reason: dict[str, int]) -> str:
    return f" ({', '.join(f'{k} {v}' for k, v in by_reason.items())})" if by_reason else ""


def _disk_free(directory: Path) -> int:
    """Free bytes on the folder's disk (what ``min_free_bytes`` is compared with)."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _status_table(doc: dict[str, Any]) -> str:
    """``status`` for people."""
    since = "" if doc["ledger_since"] is None else f" since {_utc(doc['ledger_since'])}"
    lines = [
        f"queue folder  {doc['queue_dir']}",
        f"last sync     {doc['last_sync_utc']} ({age_text(doc['last_sync_age_seconds'])} ago)",
        f"pending       {_plural(doc['pending'], 'event')}, {doc['pending_bytes']} bytes",
        f"rejected      {_plural(doc['rejected_in_queue'], 'event')} in the rejected area",
        f"set aside     {_plural(doc['aside_in_queue'], 'unusable row')}"
        + (" (see `export --aside`)" if doc["aside_in_queue"] else ""),
        f"on disk       {doc['bytes_on_disk']} bytes; {doc['disk_free_bytes']} bytes free",
        f"counted{since}:",
        f"  stored      {_plural(doc['stored'], 'event')}",
        f"  sent        {_plural(doc['sent'], 'event')}; resent {doc['resent']} "
        "(copies the collector may hold twice)",
        f"  rejected    {doc['rejected']}{_reasons(doc['rejected_by_reason'])}; "
        f"retried {doc['retried']}",
        f"  set aside   {_plural(doc['set_aside'], 'event')}",
        f"  dropped     {doc['dropped']}{_reasons(doc['dropped_by_reason'])}",
    ]
    if doc["unaccounted"]:
        lines.append(f"  unaccounted {doc['unaccounted']} (the counts do not add up)")
    if doc["waiting_after_rebind"]:
        lines.append(
            f"{_plural(doc['waiting_after_rebind'], 'event')} were logged for a collector or key "
            "after the folder was rebound from it (an app still running with the old "
            f"configuration); they wait for it. To move them too: {doc['rebind_command']} "
            "(the key in $HAMUSTRO_SHARED_SECRET_KEY, the headers in $HAMUSTRO_HEADERS)"
        )
    lines.append("")
    rows: list[dict[str, Any]] = doc["sessions"]
    if not rows:
        lines.append(
            f"nothing pending or rejected ({_plural(doc['sessions_seen'], 'session')} seen)"
        )
        return "\n".join(lines)
    # A schema column only where a schema-2 session is: a schema-1 table stays as it was.
    both = any(row["schema"] == 2 for row in rows)

    def session_cell(row: dict[str, Any]) -> str:
        return f"{row['session']} (schema {row['schema'] or '?'})" if both else row["session"]

    head = ("session", "pending", "leased", "rejected", "oldest pending", "last nr")
    table = [head] + [
        (
            session_cell(row),
            str(row["pending"]),
            str(row["leased"]),
            str(row["rejected"]),
            "-" if row["oldest_age_seconds"] is None else age_text(row["oldest_age_seconds"]),
            "-" if row["last_nr"] is None else str(row["last_nr"]),
        )
        for row in rows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for r in table:
        cells = [r[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(r[1:4], widths[1:4], strict=True)]
        cells += [r[4].ljust(widths[4]), r[5].rjust(widths[5])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _cmd_status(args: argparse.Namespace) -> int:
    limits = _check_limits(args)
    directory = _queue_dir(args.queue_dir, args.client_id)
    if limits is not None:
        return _status_check(directory, limits)
    with _read_queue(directory) as queue:
        doc = _status(queue, directory)
    if args.json:
        print(json.dumps(doc, indent=2))
    elif args.prometheus:
        sys.stdout.write(prometheus(doc))
    else:
        print(_status_table(doc))
    return 0


def _check_limits(args: argparse.Namespace) -> Limits | None:
    """``--check``'s limits (None without ``--check``); a limit without it is a usage error."""
    given = {
        name: getattr(args, name)
        for name in ("max_age", "max_pending", "recent")
        if getattr(args, name) is not None
    }
    if not args.check:
        if given:
            flags = " ".join("--" + name.replace("_", "-") for name in given)
            raise UsageError(f"{flags}: only with --check")
        return None
    for name, value in given.items():
        if not value >= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {value:g}")
    return Limits(**given)


def _status_check(directory: Path, limits: Limits) -> int:
    """``status --check``: one line on stdout; exit 0 OK, 1 WARNING, 2 CRITICAL.

    A folder that cannot be read is CRITICAL too (said on the same one line).
    """
    try:
        with _read_queue(directory) as queue:
            doc = _status(queue, directory)
    except (UsageError, Failure) as exc:
        print(f"CRITICAL: {exc}")
        return 2
    verdict = check(doc, limits, time.time())
    print(verdict.line)
    return verdict.code


# -- export and retry-rejected -----------------------------------------------------------


def _cmd_export(args: argparse.Namespace) -> int:
    directory = _queue_dir(args.queue_dir, args.client_id)
    broken = 0
    with _read_queue(directory) as queue:
        if args.aside:
            for key, raw in queue.iter_aside():
                doc = {"key": key, "bytes_base64": base64.b64encode(raw).decode("ascii")}
                sys.stdout.write(json.dumps(doc) + "\n")
            return 0
        for session, header, nr, frame in queue.iter_events(rejected=args.rejected):
            try:
                line = event_record(session, header, nr, frame)
            except (DecodeError, IndexError, ValueError) as exc:
                broken += 1
                _error(f"session {session} nr {nr}: cannot decode the stored event: {exc}")
                continue
            sys.stdout.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
    return 1 if broken else 0


def _cmd_retry_rejected(args: argparse.Namespace) -> int:
    directory = _queue_dir(args.queue_dir, args.client_id)
    with _open_queue(directory) as queue:
        moved = queue.retry_rejected()
    print(f"moved {moved} rejected events back to pending")
    return 0


def _cmd_rebind(args: argparse.Namespace) -> int:
    url = args.collector_url or os.environ.get("HAMUSTRO_COLLECTOR_URL")
    secret = os.environ.get("HAMUSTRO_SHARED_SECRET_KEY")
    secret = args.shared_secret_key or secret
    if not url or not secret:
        raise UsageError(
            "rebind needs the collector the events should go to: --collector-url "
            "[$HAMUSTRO_COLLECTOR_URL] and --shared-secret-key [$HAMUSTRO_SHARED_SECRET_KEY]"
        )
    _check_url(url)
    headers_text = args.headers or os.environ.get("HAMUSTRO_HEADERS")
    try:
        headers = _headers({"headers": headers_text}) if headers_text else None
    except json.JSONDecodeError as exc:  # its message has a position, never the text
        raise UsageError(f"--headers (or HAMUSTRO_HEADERS) is not a JSON object ({exc})") from None
    except (TypeError, ValueError) as exc:  # check_headers never shows a value
        raise UsageError(str(exc)) from None
    directory = _queue_dir(args.queue_dir, args.client_id, url)
    with _open_queue(directory) as queue:
        moved = queue.rebind(destination_id(url, secret, headers))
    print(f"{_plural(moved, 'event')} now bound to {_shown_url(track_url(url))}")
    return 0


# -- flush -----------------------------------------------------------------------------


def _bar(done: int, total: int, width: int = 30) -> str:
    """One frame of the progress bar, starting with ``\\r``.

    >>> _bar(500, 2000, width=10)
    '\\rsending [##--------] 500/2000 25%'
    """
    done = min(total, max(0, done))
    filled = width * done // total if total else width
    percent = 100 * done // total if total else 100
    return f"\rsending [{'#' * filled}{'-' * (width - filled)}] {done}/{total} {percent}%"


class _Progress:
    """A plain ``\\r`` progress bar on ``stream``, redrawn from a polling thread.

    The thread only reads ``queue.pending_count()`` (a ``Queue`` may be used
    from several threads; this one closes its own connection when done).
    """

    def __init__(self, stream: TextIO, queue: Queue, total: int, width: int = 30) -> None:
        self.stream = stream
        self.queue = queue
        self.total = total
        self.width = width
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hamustro-cli-progress", daemon=True)

    def _draw(self, left: int) -> None:
        with contextlib.suppress(OSError, ValueError):  # a closed terminal
            self.stream.write(_bar(self.total - left, self.total, self.width))
            self.stream.flush()

    def _run(self) -> None:
        try:
            while not self._stop.wait(0.2):
                self._draw(self.queue.pending_count())
        except _QUEUE_ERRORS:
            pass  # only the bar stops; the flush reports its own errors
        finally:
            self.queue.close()  # this thread's connection

    def __enter__(self) -> _Progress:
        self._draw(self.total)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(*_QUEUE_ERRORS):
            self._draw(self.queue.pending_count())
        with contextlib.suppress(OSError, ValueError):
            self.stream.write("\n")
            self.stream.flush()


def _cmd_flush(args: argparse.Namespace) -> int:
    """Send the folder's events bound to this collector and key, each with its stored header.

    A :class:`~hamustro_logging.delivery.Delivery` of its own over the folder's
    queue, not a ``ClientTracker``: a tracker is an identity (a session, a
    header registered in the folder), and flushing needs none.
    """
    config = _config(args, _FLUSH_SETTINGS)
    timeout = _timeout(config)
    url, secret = config["collector_url"], config["shared_secret_key"]
    directory = _queue_dir(config.get("queue_dir"), config.get("client_id"), url)
    reporter = Reporter()
    transport = Transport(url, secret, timeout=timeout, headers=_headers(config))
    sent = failed = 0
    try:
        with _open_queue(directory, notify=reporter.once) as queue:
            destinations = accepted_destinations(url, secret, _headers(config))
            delivery = Delivery(
                lambda: queue, transport, reporter, Stats(), destination=destinations
            )
            delivery.one_shot = True
            # Journals no live process moves (apps that ended or were killed,
            # apps with sender="agent") are moved in first.
            spool = Spool(directory, lambda: queue, reporter.once)
            try:
                spool.move_others()
            finally:
                spool.close()
            pending = queue.pending_count()
            show = sys.stderr.isatty() and pending > PROGRESS_MIN_EVENTS
            progress = _Progress(sys.stderr, queue, pending) if show else None
            with progress or contextlib.nullcontext():
                while True:
                    # drain() sends batch after batch and stops at the first
                    # failure; try again only while a pass still delivers something.
                    result = delivery.drain(force=True)
                    sent += result.sent
                    failed += result.failed
                    if not (result.failed and result.sent and result.left):
                        break
            left = queue.pending_count()
    finally:
        transport.close()
    print(f"sent {sent}, failed attempts {failed}, left {left}")
    if left and not failed:
        _error(
            f"{_plural(left, 'event')} not sent: leased by another sender, bound to another "
            "collector or key (see `rebind`), or added while flushing; run flush again later"
        )
    return 0 if left == 0 else 1


def _cmd_agent(args: argparse.Namespace) -> int:
    """Move every journal of the folder into its store and send, until SIGTERM or SIGINT."""
    config = _config(args, _FLUSH_SETTINGS)
    url, secret = config["collector_url"], config["shared_secret_key"]
    directory = _queue_dir(config.get("queue_dir"), config.get("client_id"), url)
    reporter = Reporter()
    if not (directory / "cache.db").exists():  # an agent may start before the first app
        try:
            Queue(directory, notify=reporter.once).close()
        except _QUEUE_ERRORS as exc:
            raise Failure(f"cannot make the queue in {directory}: {exc}") from None
    transport = Transport(url, secret, timeout=_timeout(config), headers=_headers(config))
    try:
        with _open_queue(directory, notify=reporter.once) as queue:
            accepted = accepted_destinations(url, secret, _headers(config))
            delivery = Delivery(lambda: queue, transport, reporter, Stats(), destination=accepted)
            left = agent.run(
                queue, delivery, reporter, _say,
                interval=args.interval, stop_timeout=args.stop_timeout,
            )  # fmt: skip
    finally:
        transport.close()
    return 0 if left == 0 else 1


def _say(line: str) -> None:
    print(PREFIX + line, file=sys.stderr, flush=True)


# -- send-test -------------------------------------------------------------------------


def _explain_test(answer: Answer, url: str, read_timeout: float) -> str:
    """What the collector's answer to the test event means, in plain words."""
    status = answer.status
    if status == 200:
        return "ok: the collector accepted the test event"
    if status == 405:
        return (
            "405: the collector refused the signature: the secret is probably wrong "
            "(check shared_secret_key / HAMUSTRO_SHARED_SECRET_KEY)"
        )
    if status == 400:
        return "400: the collector refused the collection as malformed"
    if status in (429, 503):
        wait = "" if answer.retry_after is None else f" (it asks to wait {answer.retry_after:g} s)"
        return f"{status}: the collector is busy or shutting down; try again later{wait}"
    if status is not None:
        return (
            f"HTTP {status}: not an answer a Hamustro collector gives; "
            f"is {url} the collector's track URL?"
        )
    if answer.sent and (answer.error or "").startswith("no answer within"):
        return f"no answer within {read_timeout:g} s from {url}"
    return f"{answer.error}; is the collector running at {url}?"


def _test_header(config: dict[str, str], schema: int, env: int) -> tuple[str, bytes]:
    """The session and collection header of ``send-test`` in ``schema``.

    A session of its own (product_version + "+send-test"), so the test
    event's nr 1 never shares a (session, nr) with the application's real events.
    """
    device = sha256hex(config["device_id"])
    client, system_version = config["client_id"], config["system_version"]
    product_version = config["product_version"] + "+send-test"
    if schema == 1:
        session = session_id(device, client, system_version, product_version)
        return session, collection_header(device, client, session, system_version, product_version)
    session = session_id_v2(device, client, system_version, product_version, env)
    fields = {name: config.get(name) for name in SCHEMA2_OPTIONS[1:]}
    if fields["system_language"] is None:
        fields["system_language"] = default_system_language()
    header = collection_header_v2(
        device, client, session, system_version, product_version, env, **fields
    )
    return session, header


def _cmd_send_test(args: argparse.Namespace) -> int:
    config = _tracker_config(args)
    timeout = _timeout(config)
    schema = check_schema(config.get("schema", "1"))
    # The probe of the other schema needs some env: any does, nothing is stored.
    env = environment(config["env"]) if schema == 2 else 0
    session, header = _test_header(config, schema, env)
    now = time.time()
    try:
        if schema == 1:
            frame = encode_payload(build_event(args.event, is_testing=True, at=now), 1)
        else:
            frame = encode_payloads_v2([build_event_v2(args.event, at=now)], 1)[0]
    except EventError as exc:
        raise UsageError(f"--event: {exc}") from None
    transport = Transport(
        config["collector_url"], config["shared_secret_key"], timeout=timeout,
        headers=_headers(config),
    )  # fmt: skip
    url = _shown_url(transport.url)
    try:
        # A valid collection without payloads gets 204 only in the schema the
        # collector speaks (400 in the other): ask in ours, then in the other.
        answer = transport.post(header)
        if answer.status == 400:
            other = 2 if schema == 1 else 1
            if transport.post(_test_header(config, other, env)[1]).status == 204:
                _error(
                    f"the collector at {url} speaks schema {other}, this configuration schema "
                    f"{schema}: set schema={other} (--schema {other} or HAMUSTRO_SCHEMA={other})"
                    + (" and its env (--env or HAMUSTRO_ENV)" if other == 2 else "")
                )
                return 1
        if answer.status in (200, 204):  # else its answer is the event's (405: the secret...)
            answer = transport.post(header + frame)
    finally:
        transport.close()
    message = _explain_test(answer, url, timeout[1])
    if not answer.ok:
        _error(message)
        return 1
    marked = "is_testing" if schema == 1 else "schema 2, which has no is_testing"
    print(f"{message} (event {args.event!r}, session {session}, nr 1, {marked}) at {url}")
    return 0


# -- the parser and main -----------------------------------------------------------------


def _unrecognized(rest: list[str]) -> str:
    """Arguments a command does not take, for its usage error: options by name, no values.

    A value given to a command that does not take its option may be the
    secret (``status --shared-secret-key KEY``), so none is repeated.

    >>> _unrecognized(["--bogus"]), _unrecognized(["--shared-secret-key", "k", "--headers={}"])
    ('--bogus', '--shared-secret-key --headers (and 1 value, not shown)')
    """

    def is_option(arg: str) -> bool:  # --name or -x: a value may start with "-" too
        return arg.startswith("--") or (len(arg) == 2 and arg.startswith("-"))

    options = [arg.split("=", 1)[0] for arg in rest if is_option(arg)]
    values = len(rest) - len(options)
    shown = " ".join(options)
    if values:
        count = _plural(values, "value")
        shown += f" (and {count}, not shown)" if options else f"{count}, not shown"
    return shown


def _error(message: str) -> None:
    print(PREFIX + message.replace("\n", " "), file=sys.stderr, flush=True)


_EPILOG = "exit codes: 0 success, 1 the operation failed or left something, 2 usage error"


def build_parser() -> argparse.ArgumentParser:
    """The ``hamustro-logging`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Look into a hamustro-logging queue folder, send it, test a collector.",
        epilog=_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=description, epilog=_EPILOG)

    status = add(
        "status",
        "pending, leased and rejected events per session; last sync; bytes on disk",
        "Show the queue folder's state: per session the pending, leased and rejected "
        "events, the age of the oldest pending event and the last nr; for the folder "
        "the last sync (or the queue's creation), bytes on disk and pending bytes. "
        "--check: one line and exit 0 OK, 1 WARNING, 2 CRITICAL (the oldest pending event "
        "older than --max-age or more than --max-pending pending, or damaged data set aside "
        "in the last --recent seconds, are CRITICAL; half of the limits, an event refused "
        "recently, or events pending with none ever delivered, a WARNING).",
    )
    _add_queue_options(status)
    shown = status.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="print one JSON document")
    shown.add_argument(
        "--check",
        action="store_true",
        help="print one line saying whether delivery is healthy; exit 0 OK, 1 WARNING, "
        "2 CRITICAL (for probes, cron and monitoring checks)",
    )
    shown.add_argument(
        "--prometheus",
        action="store_true",
        help="print the folder's counters in the Prometheus text format "
        "(for node_exporter's textfile collector)",
    )
    status.add_argument(
        "--max-age", type=float, metavar="SECONDS",
        help="--check: CRITICAL when the oldest pending event is older, WARNING past half "
        f"(default {Limits.max_age:g})",
    )  # fmt: skip
    status.add_argument(
        "--max-pending", type=int, metavar="N",
        help="--check: CRITICAL when more events are pending, WARNING past half "
        f"(default {Limits.max_pending})",
    )  # fmt: skip
    status.add_argument(
        "--recent", type=float, metavar="SECONDS",
        help="--check: data set aside (CRITICAL) or refused (WARNING) this recently counts "
        f"(default {Limits.recent:g})",
    )  # fmt: skip

    flush = add(
        "flush",
        "send everything pending now",
        "Send every pending event in the queue folder (of every session, each with its "
        "own stored header) that is bound to this collector and key: only the folder, the "
        "collector URL and the secret are needed. Prints 'sent N, failed attempts F, "
        "left L'; exits 0 if nothing is left.",
    )
    _add_config_options(flush, _FLUSH_SETTINGS)

    agent_cmd = add(
        "agent",
        "move and send the folder's events until stopped (for systemd and sidecars)",
        "Run in the foreground: move the journals of every app writing to the queue folder "
        "(apps with sender='agent' start no thread of their own) into the folder's store and "
        "send the events bound to this collector and key, with the handler's retry rules. "
        "SIGTERM or SIGINT stops it within --stop-timeout seconds (plus a request in flight); "
        "what is not sent stays in the folder. Says on stderr when it starts, when delivery "
        "fails and recovers, and what it left; exits 0 if it left nothing.",
    )
    _add_config_options(agent_cmd, _FLUSH_SETTINGS)
    agent_cmd.add_argument(
        "--interval", type=float, default=0.2, metavar="SECONDS",
        help="pause between two looks at the folder (default 0.2)",
    )  # fmt: skip
    agent_cmd.add_argument(
        "--stop-timeout", type=float, default=10.0, metavar="SECONDS",
        help="time for the last move and send after a stop signal (default 10)",
    )  # fmt: skip

    send_test = add(
        "send-test",
        "send one test event straight to the collector and explain the answer",
        "Send one test event directly to the collector (not through the queue, which is "
        "left untouched) and say what the answer means. Schema 1 marks it is_testing; "
        "schema 2 has no such field, so it is stored like any event, in a session of its "
        "own (product_version + '+send-test'). First asks the collector, with an empty "
        "collection, whether it speaks the configured schema, and says which setting to "
        "change if not. Exits 0 only if the collector answered 200.",
    )
    _add_config_options(send_test)
    send_test.add_argument(
        "--event",
        default="hamustro_logging.send_test",
        help="the event name (default: hamustro_logging.send_test)",
    )

    export = add(
        "export",
        "print every pending (or rejected) event as one JSON line",
        "Print every pending event (or, with --rejected, every event the collector refused "
        "with 400) as one JSON line, with its session, nr, payload and collection fields.",
    )
    _add_queue_options(export)
    which = export.add_mutually_exclusive_group()
    which.add_argument("--rejected", action="store_true", help="export the rejected events")
    which.add_argument(
        "--aside",
        action="store_true",
        help="export the rows set aside as unusable: their key and raw bytes (base64)",
    )

    retry = add(
        "retry-rejected",
        "move the rejected events back to pending",
        "Move every event the collector refused with 400 back to pending, to be sent again.",
    )
    _add_queue_options(retry)

    rebind = add(
        "rebind",
        "send the events kept for another collector or key to this one",
        "Events are kept for the collector and key they were logged for, and only a sender "
        "configured for those sends them. After a key rotation, or when the collector moved, "
        "bind every event in the folder to the collector and key given here instead (they are "
        "sent by the next flush or the running app).",
    )
    _add_queue_options(rebind)
    rebind.add_argument(
        "--collector-url", metavar="URL", help="the collector's base URL [$HAMUSTRO_COLLECTOR_URL]"
    )
    rebind.add_argument(
        "--shared-secret-key",
        metavar="KEY",
        help="its shared secret key [$HAMUSTRO_SHARED_SECRET_KEY]; better set in the environment",
    )
    rebind.add_argument(
        "--headers",
        metavar="JSON",
        help="the extra HTTP headers the app sends, a JSON object [$HAMUSTRO_HEADERS]: part of "
        "the destination, like the key; better set in the environment",
    )

    # Everything after `collector` goes to the collector's own parser, --help included.
    sub.add_parser(
        "collector",
        help="run the local development collector (see `collector --help`)",
        add_help=False,
    )
    return parser


def _run_collector(argv: list[str]) -> int:
    """The development collector's own ``main``; a bad port or output file is one line."""
    try:
        return collector.main(argv)
    except (OSError, OverflowError) as exc:  # --port 99999 overflows; --output /nonexistent/x
        raise Failure(f"collector: cannot start: {exc}") from None


_COMMANDS = {
    "status": _cmd_status,
    "flush": _cmd_flush,
    "agent": _cmd_agent,
    "send-test": _cmd_send_test,
    "export": _cmd_export,
    "retry-rejected": _cmd_retry_rejected,
    "rebind": _cmd_rebind,
}


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    return code if isinstance(code, int) else 2


def main(argv: list[str] | None = None) -> int:
    """Run ``hamustro-logging`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
        if args.command is None:
            parser.print_usage(sys.stderr)
            _error("say which command; see --help")
            return 2
        if args.command == "collector":
            return _run_collector(rest)
        if rest:
            parser.error(f"unrecognized arguments: {_unrecognized(rest)}")
        return _COMMANDS[args.command](args)
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        return _exit_code(exc)
    except UsageError as exc:
        _error(str(exc))
        return 2
    except Failure as exc:
        _error(str(exc))
        return 1
    except KeyboardInterrupt:
        _error("interrupted; whatever was not sent stays in the queue")
        return 130
    except BrokenPipeError:
        # `export | head`: the reader is gone. Silence the flush at exit too.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 1
