"""``hamustro-logging status``: the folder's state as a table, JSON, a health check or metrics.

Reads only: the folder is opened through ``_read_queue`` (a
:class:`~hamustro_logging.reader.QueueReader`, which writes nothing).
``_status`` builds the ``status --json`` document; the table for people,
``--check`` (:func:`hamustro_logging.health.check`: one line, exit 0, 1 or
2) and ``--prometheus`` (:func:`hamustro_logging.health.prometheus`) are
views of it.

Who calls what: :func:`hamustro_logging.cli.main` calls :func:`run` on the
main thread, and ``build_parser`` calls :func:`add_parser`; the options,
errors and output it shares with the other commands are ``_common``'s.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..health import Limits, age_text, check, prometheus
from ..journal import unmoved_events
from ..reader import QueueReader, decode_payload
from ..wire import frame_schema
from ._common import (
    AddCommand,
    Failure,
    UsageError,
    _add_queue_options,
    _plural,
    _queue_dir,
    _read_queue,
)

#: The command this module runs.
NAME = "status"


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
    # Written by an app and not yet moved into the store (read, not adopted).
    in_journals = sum(unmoved_events(directory, queue.journal_moved_to()).values())
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
        "in_journals": in_journals,
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


def _status_table(doc: dict[str, Any]) -> str:
    """``status`` for people."""
    since = "" if doc["ledger_since"] is None else f" since {_utc(doc['ledger_since'])}"
    lines = [
        f"queue folder  {doc['queue_dir']}",
        f"last sync     {doc['last_sync_utc']} ({age_text(doc['last_sync_age_seconds'])} ago)",
        f"pending       {_plural(doc['pending'], 'event')}, {doc['pending_bytes']} bytes",
        f"in journals   {_plural(doc['in_journals'], 'event')} not yet moved into the store",
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


def run(args: argparse.Namespace) -> int:
    """The table, ``--json``, ``--prometheus`` (exit 0), or ``--check`` (exit 0, 1 or 2)."""
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


def add_parser(add: AddCommand) -> None:
    """Add ``status`` and its options to the parser (``build_parser`` calls it)."""
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
