"""A queue folder's health and metrics: the rules of ``status --check``, and ``--prometheus``.

Pure functions of the ``status --json`` document, which the CLI's ``status``
command builds from a :class:`~hamustro_logging.reader.QueueReader` (that
writes nothing): no I/O here, no clock but the ``now`` given. Who calls
what: the ``status`` command, on its one thread.

The rules of :func:`check`, most severe first (``docs/cli.md`` lists the same):

=========  ================================================================
CRITICAL   the oldest pending event is older than ``max_age``; more than
           ``max_pending`` events pending; a row, a journal segment or a
           database set aside as damaged in the last ``recent`` seconds
WARNING    the oldest pending event is older than half ``max_age``; more
           than half ``max_pending`` pending; the collector refused an event
           in the last ``recent`` seconds; events pending and none ever
           delivered since the ledger began
OK         none of these
=========  ================================================================

Pending counts the events in the store and those in journals not yet moved
into it (``in_journals``: an app killed with no agent running leaves them).
An event waits only while deliveries fail (or nothing sends the folder), so
the age of the oldest pending event is how long delivery has been failing.

>>> doc = {"pending": 3, "oldest_pending_age_seconds": 2000.0, "sent": 10,
...        "last_sync": 0.0, "last_set_aside": None, "last_rejected": None,
...        "rejected_in_queue": 0, "aside_in_queue": 0, "set_aside_files": []}
>>> check(doc, Limits(max_age=3600), now=100.0)
Verdict(code=1, line='WARNING: the oldest pending event is 33m 20s old, over half of --max-age 3600 s (3 pending, oldest 33m 20s, last delivery 1m 40s ago)')
"""  # noqa: E501 -- a doctest's expected line

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["CRITICAL", "OK", "WARNING", "Limits", "Verdict", "age_text", "check", "prometheus"]

OK, WARNING, CRITICAL = 0, 1, 2
_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL"}


@dataclass(frozen=True)
class Limits:
    """The thresholds of :func:`check` (``status --check``'s options and their defaults)."""

    #: Seconds the oldest pending event may wait (critical above, warning above half).
    max_age: float = 3600.0
    #: Events that may be pending (critical above, warning above half).
    max_pending: int = 100_000
    #: Seconds during which something set aside (critical) or refused (warning) counts.
    recent: float = 86_400.0


@dataclass(frozen=True)
class Verdict:
    """The exit code (0 OK, 1 WARNING, 2 CRITICAL) and the one line that says why."""

    code: int
    line: str


def age_text(seconds: float) -> str:
    """A short human age, two units at most.

    >>> age_text(7), age_text(192), age_text(3725), age_text(90061)
    ('7s', '3m 12s', '1h 2m', '1d 1h')
    """
    left = max(0, int(seconds))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size or (unit == "s" and not parts):
            parts.append(f"{left // size}{unit}")
            left %= size
        if len(parts) == 2 or (parts and left == 0):
            break
    return " ".join(parts)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def check(doc: Mapping[str, Any], limits: Limits, now: float) -> Verdict:
    """The folder's health by the rules of the module docstring; every reason of the worst level."""
    critical: list[str] = []
    warning: list[str] = []
    # Events in journals not moved yet wait too (an app killed with no agent).
    pending: int = doc["pending"] + doc.get("in_journals", 0)
    age: float | None = doc["oldest_pending_age_seconds"]
    if age is not None and age > limits.max_age:
        critical.append(
            f"the oldest pending event is {age_text(age)} old, over --max-age {limits.max_age:g} s"
        )
    elif age is not None and age > limits.max_age / 2:
        warning.append(
            f"the oldest pending event is {age_text(age)} old, "
            f"over half of --max-age {limits.max_age:g} s"
        )
    if pending > limits.max_pending:
        critical.append(
            f"{_plural(pending, 'event')} pending, over --max-pending {limits.max_pending}"
        )
    elif pending > limits.max_pending / 2:
        warning.append(
            f"{_plural(pending, 'event')} pending, over half of --max-pending {limits.max_pending}"
        )
    aside: float | None = doc["last_set_aside"]
    if aside is not None and now - aside <= limits.recent:
        what = []
        if doc["aside_in_queue"]:
            what.append(f"{_plural(doc['aside_in_queue'], 'unusable row')} (export --aside)")
        what += [f"{name}" for name in doc["set_aside_files"]]
        critical.append(
            f"damaged data set aside {age_text(now - aside)} ago: {', '.join(what) or 'gone'}"
        )
    rejected: float | None = doc["last_rejected"]
    if rejected is not None and now - rejected <= limits.recent:
        warning.append(
            f"the collector refused events {age_text(now - rejected)} ago "
            f"({doc['rejected_in_queue']} in the rejected area: export --rejected)"
        )
    if pending and not doc["sent"]:
        warning.append("events are pending and none was ever delivered from this folder")
    summary = f"{pending} pending"
    if age is not None:
        summary += f", oldest {age_text(age)}"
    if doc["sent"]:
        summary += f", last delivery {age_text(now - doc['last_sync'])} ago"
    else:
        summary += ", nothing delivered yet"
    code, reasons = (
        (CRITICAL, critical) if critical else (WARNING, warning) if warning else (OK, [])
    )
    text = f"{'; '.join(reasons)} ({summary})" if reasons else summary
    return Verdict(code, f"{_NAMES[code]}: {text}")


# -- Prometheus ---------------------------------------------------------------------------

#: Reasons that get a sample even at 0, so that a rule on the counter's increase
#: sees its first event (a series that appears from nothing has no increase):
#: the collector's answers (``retry.py``) and every reason the library drops for
#: (``queue.py``: queue_full; the handler and its flusher: the others).
_KNOWN_REASONS = {
    "rejected": ("400", "413"),
    "dropped": ("buffer_full", "closed", "error", "invalid", "queue_full", "storage"),
}


def _escape(value: str, quote: bool) -> str:
    out = value.replace("\\", "\\\\").replace("\n", "\\n")
    return out.replace('"', '\\"') if quote else out


def _number(value: float) -> str:
    """A sample value as the text format writes it.

    >>> _number(3), _number(1454514088.25), _number(float("inf"))
    ('3', '1454514088.25', '+Inf')
    """
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


#: One family each, in this order: (metric, type, help, the ``status --json`` key it shows).
_FIGURES = (
    ("hamustro_events_stored_total", "counter", "Events written into the queue folder.",
     "stored"),
    ("hamustro_events_sent_total", "counter", "Events the collector answered 200 for.", "sent"),
    ("hamustro_events_resent_total", "counter",
     "Sends of events an earlier request may already have stored (possible duplicates).",
     "resent"),
    ("hamustro_events_rejected_total", "counter",
     "Events the collector refused on their own, by its answer.", "rejected_by_reason"),
    ("hamustro_events_retried_total", "counter",
     "Rejected events moved back to pending (retry-rejected).", "retried"),
    ("hamustro_events_set_aside_total", "counter", "Events set aside as unusable.", "set_aside"),
    ("hamustro_events_dropped_total", "counter", "Events never stored, by reason.",
     "dropped_by_reason"),
    ("hamustro_events_pending", "gauge", "Events waiting to be sent.", "pending"),
    ("hamustro_events_in_journals", "gauge",
     "Events written to journals and not yet moved into the store.", "in_journals"),
    ("hamustro_pending_bytes", "gauge", "Encoded bytes of the pending events.", "pending_bytes"),
    ("hamustro_oldest_pending_age_seconds", "gauge",
     "Age of the oldest pending event (0 when none is pending).", "oldest_pending_age_seconds"),
    ("hamustro_last_success_timestamp_seconds", "gauge",
     "When the collector last answered 200 (the folder's creation before the first).",
     "last_sync"),
    ("hamustro_events_rejected_in_queue", "gauge", "Events in the rejected area now.",
     "rejected_in_queue"),
    ("hamustro_rows_set_aside", "gauge", "Rows set aside as unusable now (export --aside).",
     "aside_in_queue"),
    ("hamustro_files_set_aside", "gauge",
     "Journal segments and databases set aside as damaged, still in the folder.",
     "set_aside_files"),
    ("hamustro_last_set_aside_timestamp_seconds", "gauge",
     "When a row or a file was last set aside as damaged.", "last_set_aside"),
    ("hamustro_last_rejected_timestamp_seconds", "gauge",
     "When the collector last refused an event still in the rejected area.", "last_rejected"),
    ("hamustro_events_unaccounted", "gauge",
     "Events the ledger's counts do not place (0 when they add up).", "unaccounted"),
    ("hamustro_ledger_since_timestamp_seconds", "gauge",
     "When the ledger's counts began in this folder.", "ledger_since"),
    ("hamustro_folder_bytes", "gauge", "Bytes of the queue folder's files.", "bytes_on_disk"),
    ("hamustro_disk_free_bytes", "gauge", "Free bytes on the queue folder's disk.",
     "disk_free_bytes"),
)  # fmt: skip


def prometheus(doc: Mapping[str, Any]) -> str:
    """The folder's figures in the Prometheus text exposition format (0.0.4).

    Every sample carries the ``queue_dir`` label, so the files of several
    folders can sit side by side in node_exporter's textfile folder.
    Counters are the folder's ledger; timestamps are epoch seconds; a figure
    the folder does not have (no ledger yet, nothing ever set aside) has no
    sample. ``docs/stats.md`` lists every metric.
    """
    folder = f'queue_dir="{_escape(str(doc["queue_dir"]), quote=True)}"'
    lines: list[str] = []
    for name, kind, text, key in _FIGURES:
        lines.append(f"# HELP {name} {_escape(text, quote=False)}")
        lines.append(f"# TYPE {name} {kind}")
        value = doc[key]
        if key.endswith("_by_reason"):
            counts = dict.fromkeys(_KNOWN_REASONS[key.removesuffix("_by_reason")], 0)
            counts.update(value)
            for reason in sorted(counts):
                shown = _escape(reason, quote=True)
                lines.append(f'{name}{{{folder},reason="{shown}"}} {_number(counts[reason])}')
            continue
        if isinstance(value, list):
            value = len(value)
        elif value is None and key == "oldest_pending_age_seconds":
            value = 0
        if value is not None:
            lines.append(f"{name}{{{folder}}} {_number(value)}")
    return "\n".join(lines) + "\n"
