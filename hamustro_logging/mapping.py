"""Validate event fields and map a ``logging.LogRecord`` to an :class:`Event`.

No threads, no I/O: everything here runs on the caller's thread, so a bad
field is reported where it was logged, with the field named.

>>> import logging
>>> record = logging.makeLogRecord({"event": "order_placed", "user_id": 7,
...                                 "params": {"total": 12}, "created": 1454514088.5})
>>> map_record(record)  # doctest: +NORMALIZE_WHITESPACE
Event(at=1454514088, event=b'order_placed', user_id=7, ip=None,
      params=b'{"total":12}', is_testing=False)
>>> map_record(logging.makeLogRecord({"msg": "plain log line"})) is None
True
"""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import Any

from .wire import UINT32_MAX, UINT64_MAX, Event

__all__ = ["EventError", "build_event", "describe", "extra_attributes", "map_record"]

#: Attributes every LogRecord has; whatever else a record carries came from
#: ``extra=`` (or a filter). Taken from a blank record, as structlog's
#: ExtraAdder does, so it stays right when Python adds one (taskName, 3.12).
_BLANK_RECORD_ATTRS = frozenset(
    logging.LogRecord("", logging.INFO, "", 0, "", (), None).__dict__
) | {"message", "asctime"}

#: One encoder, made once: json.dumps with options builds a new one per call.
#: allow_nan=False: NaN and Infinity are not JSON (RFC 8259); a warehouse's
#: JSON parser would choke on the whole event, so they are refused here.
_to_json = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str
).encode

#: Largest encoded payload accepted by default (the bulk of it is params).
DEFAULT_MAX_EVENT_BYTES = 64 * 1024


class EventError(ValueError):
    """An event field is missing or has a value the collector cannot take.

    The message is one line naming the field, the value's type and what was
    wrong; ``field`` holds the field's name.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"hamustro event field {field!r}: {message}")
        self.field = field


def _utf8(field: str, value: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EventError(
            field, f"str is not valid Unicode ({exc.reason} at index {exc.start})"
        ) from None


def _type_name(value: object) -> str:
    return type(value).__name__


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, even one whose ``__str__`` raises (one line, bounded).

    >>> class Bad(Exception):
    ...     def __str__(self) -> str: raise ValueError("no")
    >>> describe(Bad())
    'Bad (its message cannot be shown)'
    """
    try:
        text = str(exc)
    except Exception:
        return f"{_type_name(exc)} (its message cannot be shown)"
    text = " ".join(text.split())[:300]
    return f"{_type_name(exc)}: {text}" if text else _type_name(exc)


def _params_bytes(params: object) -> bytes | None:
    if params is None:
        return None
    if isinstance(params, str):
        return _utf8("params", params)
    if isinstance(params, (dict, list, tuple)):
        try:
            text = _to_json(params)
        except Exception as exc:
            # keys that are not str/int/float/bool/None, circular references,
            # NaN or Infinity, nesting deeper than the recursion limit, or a
            # value whose __str__ raises (whatever it raises)
            reason = "nested too deeply" if isinstance(exc, RecursionError) else describe(exc)
            raise EventError(
                "params", f"{_type_name(params)} cannot be JSON-encoded: {reason}"
            ) from None
        return _utf8("params", text)
    raise EventError("params", f"expected str, dict or list, got {_type_name(params)}")


def build_event(
    event: object,
    user_id: object = None,
    params: object = None,
    is_testing: object = False,
    ip: object = None,
    at: float | int | None = None,
    *,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
) -> Event:
    """Check every field and return the :class:`Event` to store.

    Raises :class:`EventError` (a ``ValueError``) naming the first bad field.

    >>> build_event("signup", user_id=-1, at=0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    hamustro_logging.mapping.EventError: ... field 'user_id': int -1 is outside 0..4294967295
    """
    # This runs for every event on the application's thread: the common path
    # is kept to plain checks, and every failure names its field.
    if not isinstance(event, str):
        raise EventError("event", f"expected a non-empty str, got {_type_name(event)}")
    if not event:
        raise EventError("event", "expected a non-empty str, got an empty str")
    name = _utf8("event", event)

    if user_id is not None:
        if isinstance(user_id, bool) or not isinstance(user_id, int):
            raise EventError("user_id", f"expected int, got {_type_name(user_id)}")
        if not 0 <= user_id <= UINT32_MAX:
            raise EventError("user_id", f"int {user_id} is outside 0..{UINT32_MAX}")
        if type(user_id) is not int:  # an IntEnum, say: store the plain number
            user_id = int(user_id)

    if is_testing is not False and is_testing is not True:
        raise EventError("is_testing", f"expected bool, got {_type_name(is_testing)}")

    ip_bytes: bytes | None = None
    if ip is not None:
        ip_bytes = _ip_bytes(ip)

    params_bytes = None if params is None else _params_bytes(params)

    if isinstance(at, bool) or not isinstance(at, (int, float)) or not 0 <= at <= UINT64_MAX:
        raise EventError("at", f"expected epoch seconds, got {_type_name(at)} {at!r}")

    size = len(name) if params_bytes is None else len(name) + len(params_bytes)
    if size > max_event_bytes:
        field = "event" if len(name) > max_event_bytes // 2 else "params"
        raise EventError(
            field,
            f"the event is {size} bytes ({len(name)} of them its name), more than "
            f"max_event_bytes={max_event_bytes}",
        )
    # tuple.__new__ skips NamedTuple's Python-level __new__: half the cost.
    return tuple.__new__(Event, (int(at), name, user_id, ip_bytes, params_bytes, is_testing))


def _ip_bytes(ip: object) -> bytes:
    if not isinstance(ip, str):
        raise EventError("ip", f"expected str, got {_type_name(ip)}")
    try:
        ipaddress.ip_address(ip)
        if not ip.isascii():  # an IPv6 scope id may be any text
            raise ValueError(ip)
    except ValueError:
        raise EventError("ip", f"str {ip[:64]!r} is not an IPv4 or IPv6 address") from None
    return ip.encode("ascii")


def map_record(
    record: logging.LogRecord,
    default_is_testing: bool = False,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    event_key: str = "event",
) -> Event | None:
    """The default mapping: ``None`` for a record without an ``event`` attribute.

    Reads ``event`` (or the attribute named by ``event_key``), ``user_id``,
    ``params``, ``is_testing`` and ``ip`` from the record (usually given with
    ``extra=``); ``at`` is ``record.created``. A record whose ``extra``
    attribute is a dict holding them (what loguru hands a standard handler
    used as a sink) is read from that dict.

    >>> r = logging.makeLogRecord({"extra": {"event": "signup", "user_id": 7}, "created": 5})
    >>> map_record(r).event, map_record(r).user_id
    (b'signup', 7)
    """
    d = record.__dict__
    if event_key not in d:
        extra = d.get("extra")
        if not (type(extra) is dict and event_key in extra):
            return None
        d = extra
    return build_event(
        d[event_key],
        d.get("user_id"),
        d.get("params"),
        d.get("is_testing", default_is_testing),
        d.get("ip"),
        record.created,
        max_event_bytes=max_event_bytes,
    )


def extra_attributes(record: logging.LogRecord) -> dict[str, Any]:
    """The attributes a caller added to ``record`` (with ``extra=`` or a filter).

    Useful in a :meth:`HamustroHandler.map_record` override, for example to
    send every extra attribute as params.

    >>> r = logging.makeLogRecord({"msg": "x", "event": "e", "plan": "pro"})
    >>> extra_attributes(r)
    {'event': 'e', 'plan': 'pro'}
    """
    return {k: v for k, v in record.__dict__.items() if k not in _BLANK_RECORD_ATTRS}
