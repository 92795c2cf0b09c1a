"""What both schemas' checks share: the signed headers, the answer, how a payload is stamped.

:func:`.schema1.check` and :func:`.schema2.check` begin with
:func:`signature`, then check the body their own way and record each
accepted payload as one JSON line with the helpers here, as upstream
stores it. Nothing here holds state: a check's whole outcome is its
:class:`Answer`, which the server (``DevCollector._store``) prints and keeps.

Which thread calls what: a connection thread of the server, one request at
a time, with no lock held.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from google.protobuf.message import Message

from .. import wire

#: One JSON line of a recorded event (and the body of a verbose error answer).
encode_json = json.JSONEncoder(separators=(",", ":")).encode


class Answer(NamedTuple):
    """What the checks decided about one request, and what it records if accepted."""

    status: int
    error: str = ""
    events: list[dict[str, Any]] | None = None  # None unless keep_events
    text: str = ""  # the JSON lines to print, each ending with a newline
    n_events: int = 0
    # Schema 2, JSON body: a parameter without name or value panics the real
    # collector's handler after it queued the payloads before it: store the
    # events (if any) and close the connection without an answer.
    crash: bool = False


def signature(headers: Any, body: bytes, secret: str) -> Answer | None:
    """The checks before the body, the same in both schemas: the refusal, or None."""
    time_header = headers.get("X-Hamustro-Time")
    if not time_header:
        return Answer(405, "X-Hamustro-Time header is missing")
    sent_signature = headers.get("X-Hamustro-Signature")
    if not sent_signature:
        return Answer(405, "X-Hamustro-Signature header is missing")
    expected = wire.signature(time_header, body, secret)
    if not hmac.compare_digest(
        sent_signature.encode("latin-1", "replace"), expected.encode("ascii")
    ):
        return Answer(405, "X-Hamustro-Signature header is invalid")
    return None


def media_type(headers: Any) -> str:
    """The Content-Type without its parameters, in lower case ("" when there is none)."""
    content_type: str = headers.get("Content-Type", "")
    return content_type.split(";", 1)[0].strip().lower()


def text(value: str | bytes) -> str:
    """A decoded string field as recorded."""
    # upb hands back bytes for a proto2 string field holding invalid UTF-8;
    # the Go collector stores such strings as they are, we store them readable.
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def raw(value: str | bytes) -> bytes:
    """A decoded string field's bytes as sent (for hashing them as Go does)."""
    return value if isinstance(value, bytes) else value.encode("utf-8")


def missing_fields(message: Message) -> list[str]:
    """The required fields ``message`` lacks, at every level."""
    # FindInitializationErrors exists at run time but not in the stubs.
    find: Callable[[], list[str]] = getattr(message, "FindInitializationErrors", list)
    return find()


def _utc(at: int) -> str | None:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))
    except (OverflowError, OSError, ValueError):
        return None  # beyond what the platform's time_t can hold


def _header_ip(headers: Any) -> str:
    """First public (``is_global``) IPv4 in X-Forwarded-For, then X-Real-Ip."""
    for name in ("X-Forwarded-For", "X-Real-Ip"):
        for value in headers.get_all(name) or ():
            for part in value.split(","):
                try:
                    address = ipaddress.IPv4Address(part.strip())
                except ValueError:
                    continue
                if address.is_global:
                    return str(address)
    return ""


class Stamps:
    """What every payload of one request gets the same way: its UTC time and a missing ip.

    The time string is computed once per second, the header ip once per request.
    """

    def __init__(self, headers: Any) -> None:
        self._headers = headers
        self._utc: dict[int, str | None] = {}
        self._ip: str | None = None

    def utc(self, at: int) -> str | None:
        if at not in self._utc:
            self._utc[at] = _utc(at)
        return self._utc[at]

    def ip(self, ip: str | bytes) -> str | bytes:
        """The payload's own ip, else the first public one of the request's headers."""
        if ip:
            return ip
        if self._ip is None:
            self._ip = _header_ip(self._headers)
        return self._ip
