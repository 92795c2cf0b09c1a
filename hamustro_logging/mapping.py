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
import time
from collections.abc import Mapping
from typing import Any

from .contextfields import _CURRENT as _CONTEXT
from .contextfields import overlay
from .wire import _SMALL, UINT32_MAX, UINT64_MAX, Event, Event2, encode_parameters, varint

__all__ = [
    "EventError",
    "build_event",
    "build_event_v2",
    "describe",
    "extra_attributes",
    "local_offset",
    "map_record",
    "map_record_v2",
    "record_body",
    "record_body_v2",
]

#: Attributes every LogRecord has; whatever else a record carries came from
#: ``extra=`` (or a filter). Taken from a blank record, as structlog's
#: ExtraAdder does, so it stays right when Python adds one (taskName, 3.12).
_BLANK_RECORD_ATTRS = frozenset(
    logging.LogRecord("", logging.INFO, "", 0, "", (), None).__dict__
) | {"message", "asctime"}

#: One encoder, made once: json.dumps with options builds a new one per call.
#: allow_nan=False: NaN and Infinity are not JSON (RFC 8259); a warehouse's
#: JSON parser would choke on the whole event, so they are refused here.
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str)
#: The C encoder ``_encoder.encode`` makes on every call, made once (a third of
#: an event's mapping time went to making it). It keeps no circular-reference
#: markers (a markers dict shared by every thread could be left holding ids
#: after an error): a circular value ends in RecursionError, and every error
#: is then encoded again by ``_encoder`` for its exact cause.
# (typeshed does not declare c_make_encoder: it is None where the _json module is missing)
_make_c_encoder = getattr(json.encoder, "c_make_encoder", None)
_fast_encoder = (
    None
    if _make_c_encoder is None
    else _make_c_encoder(
        None, str, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
)


def _to_json(value: object) -> str:
    """``value`` as compact JSON (see ``_encoder``); raises what ``json`` raises.

    >>> _to_json({"total": 12, "tags": ["a", "é"]}), _to_json(1.5)
    ('{"total":12,"tags":["a","é"]}', '1.5')
    >>> a = []; a.append(a); _to_json(a)
    Traceback (most recent call last):
    ...
    ValueError: Circular reference detected
    """
    if _fast_encoder is not None and type(value) in (dict, list):
        try:  # (not contextlib.suppress: making one cost as much as the encoding)
            return "".join(_fast_encoder(value, 0))
        except Exception:  # noqa: S110 -- RecursionError too: the exact cause comes next
            pass
    return _encoder.encode(value)


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
    used as a sink) is read from that dict. A field the record leaves out
    (or sets to None) comes from the :class:`~hamustro_logging.context` in
    force on the calling thread or task, if any; ``params`` dicts merge
    key by key, the record's winning.

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
    name = d[event_key]
    fields = _CONTEXT.get()  # hamustro_logging.context(): None outside every context
    if fields is not None:
        d = overlay(d, fields)
    return build_event(
        name,
        d.get("user_id"),
        d.get("params"),
        d.get("is_testing", default_is_testing),
        d.get("ip"),
        record.created,
        max_event_bytes=max_event_bytes,
    )


#: Epoch seconds whose varint is 5 bytes or less (until the year 3058).
_FIVE_BYTE_SECONDS = 1 << 35
#: The start of the journal record of a recent event, by event name: the
#: second it is for (as ``[start, end)`` floats), the bytes (``b"E"``, the
#: head's length, the head: that second and the name) and the name's length
#: in UTF-8. Events come many to a second under few names, so an event's
#: start is one lookup (entries are tuples replaced whole: threads need no
#: lock). Emptied when it holds ``_HEADS_MAX`` names (an app making names).
_HEADS: dict[str, tuple[float, float, bytes, int]] = {}
_HEADS_MAX = 512


def _new_head(name: str, at: float) -> tuple[float, float, bytes, int] | None:
    """Make, keep and return the ``_HEADS`` entry of ``name`` at ``at``; or None.

    None (the full path decides) for an ``at`` outside ``[0, 2**35)`` or
    NaN, an empty name, a name that is not Unicode, or a name of 0x70 bytes
    or more (below, the head's length takes one byte).
    """
    if not 0 <= at < _FIVE_BYTE_SECONDS or not name:
        return None
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return None
    n = len(encoded)
    if n >= 0x70:
        return None
    second = int(at)
    at_varint = varint(second)
    head = b"".join(
        (b"E", _SMALL[3 + len(at_varint) + n], b"\x08", at_varint, b"\x12", _SMALL[n], encoded)
    )
    if len(_HEADS) >= _HEADS_MAX:
        _HEADS.clear()
    entry = _HEADS[name] = (float(second), float(second + 1), head, n)
    return entry


def _event_start(
    record: logging.LogRecord, event_key: str
) -> tuple[tuple[float, float, bytes, int], Mapping[str, Any]] | None:
    """The common event's ``_HEADS`` entry and its fields (a context's applied); or None.

    None for a record whose event name is not a str, whose ``created`` is
    not a float, or whose start :func:`_new_head` leaves to the full path.
    """
    d: Mapping[str, Any] = record.__dict__
    name, at = d.get(event_key), record.created
    if type(name) is not str or type(at) is not float:
        return None
    head = _HEADS.get(name)
    if head is None or not head[0] <= at < head[1]:
        head = _new_head(name, at)
        if head is None:
            return None
    fields = _CONTEXT.get()
    return (head, d) if fields is None else (head, overlay(d, fields))


def record_body(
    record: logging.LogRecord,
    default_is_testing: bool,
    max_event_bytes: int,
    event_key: str,
    default_ip: bytes | None,
) -> bytes | None:
    """The default mapping and the journal encoding of schema 1 in one pass, for the common event.

    Returns exactly ``journal_body(map_record(record, ...), default_ip)``
    for a record whose fields are of the plain types (a non-empty str
    ``event``, an int ``user_id`` or none, a dict or str ``params`` or none,
    a bool ``is_testing``, no ``ip`` of its own), or ``None`` for every other
    record: a plain log line, a bad field, an unusual type. For ``None`` the
    caller takes the full path (:func:`map_record`, then
    :func:`~hamustro_logging.wire.journal_body`), which decides and says why,
    so the checks and their messages stay in one place. One pass, no
    :class:`Event` in between: this runs for every event on the app's thread.

    >>> import logging
    >>> r = logging.makeLogRecord({"event": "signup", "user_id": 7, "created": 5.0})
    >>> from hamustro_logging.wire import journal_body
    >>> record_body(r, False, 65536, "event", None) == journal_body(map_record(r))
    True
    >>> record_body(logging.makeLogRecord({"event": "signup", "user_id": "7"}), False, 65536,
    ...             "event", None) is None  # not an int: map_record says why
    True
    """
    found = _event_start(record, event_key)
    if found is None:
        return None
    head, d = found
    user_id = d.get("user_id")
    params = d.get("params")
    is_testing = d.get("is_testing", default_is_testing)
    if d.get("ip") is not None or (is_testing is not False and is_testing is not True):
        return None
    try:
        if params is None:
            encoded_params = None
        elif type(params) is dict and _fast_encoder is not None:
            encoded_params = "".join(_fast_encoder(params, 0)).encode("utf-8")
        elif type(params) is str:
            encoded_params = params.encode("utf-8")
        else:
            return None
    except Exception:  # not JSON, not Unicode: map_record names the field and the cause
        return None
    parts = [head[2]]
    n = head[3]
    if user_id is not None:
        if type(user_id) is not int or not 0 <= user_id <= UINT32_MAX:
            return None
        parts += (b"\x20", varint(user_id))
    if default_ip is not None:
        parts += (b"\x2a", varint(len(default_ip)), default_ip)
    if encoded_params is not None:
        k = len(encoded_params)
        if n + k > max_event_bytes:
            return None
        parts += (b"\x32", _SMALL[k] if k < 0x80 else varint(k), encoded_params)
    elif n > max_event_bytes:
        return None
    if is_testing:
        parts.append(b"\x38\x01")
    return b"".join(parts)


# -- schema 2 ---------------------------------------------------------------------------

#: Record attributes of schema 1 only: a schema-2 record that sets one is refused.
SCHEMA1_ONLY_FIELDS = ("is_testing",)
#: Event fields of schema 2 only (``track_event`` keywords, record attributes).
SCHEMA2_ONLY_FIELDS = ("tenant_id", "timezone", "country")

#: The UTC offsets change only on a quarter hour (UTC) in every zone in use,
#: so one computed offset holds for its whole 15-minute slot.
_OFFSET_SLOT = 900


class _LocalOffset:
    """The local UTC offset at a time, as ``+01:00``, cached per 15-minute slot.

    It runs on every schema-2 emit: one comparison when the slot is the
    cached one (a tuple replaced whole, so threads need no lock).
    """

    def __init__(self) -> None:
        #: [start, end) of the cached slot, and its offset.
        self.cached: tuple[float, float, bytes] = (0, 0, b"")

    def __call__(self, at: float) -> bytes:
        start, end, text = self.cached
        if start <= at < end:
            return text
        slot = int(at) // _OFFSET_SLOT * _OFFSET_SLOT
        text = self.format(time.localtime(at).tm_gmtoff)
        self.cached = (slot, slot + _OFFSET_SLOT, text)
        return text

    @staticmethod
    def format(seconds: int) -> bytes:
        """
        >>> _LocalOffset.format(3600), _LocalOffset.format(-34200), _LocalOffset.format(0)
        (b'+01:00', b'-09:30', b'+00:00')
        """
        sign = "-" if seconds < 0 else "+"
        minutes = (abs(seconds) + 30) // 60
        return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}".encode("ascii")


#: The process's local offset (a pure function of the time and the process's
#: time zone; the cache only saves the ``localtime`` call).
local_offset = _LocalOffset()


def _text_field(field: str, value: object) -> bytes:
    if not isinstance(value, str):
        raise EventError(field, f"expected str, got {_type_name(value)}")
    return _utf8(field, value)


def _parameters_v2(params: object) -> bytes | None:
    """Schema 2's repeated ``Parameter`` list from a mapping (see :func:`build_event_v2`)."""
    if params is None:
        return None
    if not isinstance(params, Mapping):
        hint = " (schema 1's form; schema 2 takes a mapping)" if isinstance(params, str) else ""
        raise EventError(
            "params", f"expected a mapping of str names to values, got {_type_name(params)}{hint}"
        )
    # Runs on every emit: the common values (str, int, bool) skip the JSON encoder.
    pairs: list[tuple[bytes, bytes]] = []
    try:
        for name, value in params.items():
            if not isinstance(name, str):
                raise EventError(
                    "params", f"names must be str, got {_type_name(name)} {name!r:.64}"
                )
            if not name:
                raise EventError("params", "a parameter name may not be empty")
            kind = type(value)
            if kind is str:
                text = value
            elif value is None:
                continue
            elif kind is int:
                text = str(value)
            elif kind is bool:
                text = "true" if value else "false"
            elif isinstance(value, str):  # a str subclass (a StrEnum...): its text, as is
                text = str.__str__(value)
            else:
                try:
                    text = _to_json(value)
                except Exception as exc:
                    why = "nested too deeply" if isinstance(exc, RecursionError) else describe(exc)
                    raise EventError(
                        "params", f"the value of {name!r:.64} cannot be JSON-encoded: {why}"
                    ) from None
            pairs.append((name.encode("utf-8"), text.encode("utf-8")))
    except UnicodeEncodeError as exc:
        raise EventError(
            "params", f"str is not valid Unicode ({exc.reason} at index {exc.start})"
        ) from None
    return encode_parameters(pairs) if pairs else None


def build_event_v2(
    event: object,
    params: object = None,
    user_id: object = None,
    tenant_id: object = None,
    ip: object = None,
    timezone: object = None,
    country: object = None,
    at: float | int | None = None,
    *,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
) -> Event2:
    """Check every field of a schema-2 event and return the :class:`~hamustro_logging.wire.Event2`.

    * ``params``: a mapping with str names; a str value is sent as is, None
      leaves the pair out, any other value goes as its compact JSON (``3``
      as ``"3"``, ``True`` as ``"true"``, a list as its JSON);
    * ``user_id``, ``tenant_id``: str (an int ``user_id`` is sent as its
      decimal string, as schema 1 apps pass it);
    * ``timezone``: free text; None: the local UTC offset at ``at``, as ``+01:00``;
    * ``country``: sent only when given (nothing is looked up).

    Raises :class:`EventError` (a ``ValueError``) naming the first bad field.

    >>> e = build_event_v2("signup", {"plan": "pro", "seats": 3, "trial": None},
    ...                    user_id=7, at=1454514088, timezone="+01:00")
    >>> e.user_id, e.timezone, e.params == encode_parameters([(b"plan", b"pro"), (b"seats", b"3")])
    (b'7', b'+01:00', True)
    >>> build_event_v2("signup", "plan=pro", at=0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    hamustro_logging.mapping.EventError: ... field 'params': expected a mapping ... got str (schema 1's form; schema 2 takes a mapping)
    """  # noqa: E501 -- doctest output lines
    if not isinstance(event, str):
        raise EventError("event", f"expected a non-empty str, got {_type_name(event)}")
    if not event:
        raise EventError("event", "expected a non-empty str, got an empty str")
    name = _utf8("event", event)

    # This runs for every event on the application's thread: plain checks,
    # the common types first, no loops or temporary containers.
    user: bytes | None = None
    if user_id is not None:
        if type(user_id) is str and user_id:
            user = _utf8("user_id", user_id)
        elif isinstance(user_id, int) and not isinstance(user_id, bool):
            user = str(int(user_id)).encode("ascii")
        elif isinstance(user_id, str) and user_id:
            user = _utf8("user_id", user_id)
        elif isinstance(user_id, str):
            raise EventError("user_id", "expected a non-empty str (None for no user), got ''")
        else:
            raise EventError("user_id", f"expected str (or int), got {_type_name(user_id)}")
    tenant = None if tenant_id is None else _text_field("tenant_id", tenant_id)
    if tenant == b"":
        raise EventError("tenant_id", "expected a non-empty str (None for no tenant), got ''")
    ip_bytes = None if ip is None else _ip_bytes(ip)
    country_bytes = None if country is None else _text_field("country", country)
    params_bytes = _parameters_v2(params)

    if isinstance(at, bool) or not isinstance(at, (int, float)) or not 0 <= at <= UINT64_MAX:
        raise EventError("at", f"expected epoch seconds, got {_type_name(at)} {at!r}")
    if timezone is None:
        start, end, zone = local_offset.cached  # the cache, without a call
        if not start <= at < end:
            zone = local_offset(at)
    else:
        zone = _text_field("timezone", timezone)

    size = len(name) + len(zone) + (0 if params_bytes is None else len(params_bytes))
    if user is not None:
        size += len(user)
    if tenant is not None or ip_bytes is not None or country_bytes is not None:
        size += len(tenant or b"") + len(ip_bytes or b"") + len(country_bytes or b"")
    if size > max_event_bytes:
        sizes = {
            "event": len(name), "timezone": len(zone), "tenant_id": len(tenant or b""),
            "user_id": len(user or b""), "country": len(country_bytes or b""),
            "params": len(params_bytes or b""),
        }  # fmt: skip
        field = max(sizes, key=sizes.__getitem__)
        raise EventError(
            field,
            f"the event is {size} bytes ({sizes[field]} of them its {field}), more than "
            f"max_event_bytes={max_event_bytes}",
        )
    # tuple.__new__ skips NamedTuple's Python-level __new__, as build_event does.
    return tuple.__new__(
        Event2, (int(at), name, zone, tenant, user, ip_bytes, country_bytes, params_bytes)
    )


def map_record_v2(
    record: logging.LogRecord,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    event_key: str = "event",
    default_tenant_id: str | None = None,
    default_user_id: str | None = None,
) -> Event2 | None:
    """Schema 2's default mapping: ``None`` for a record without an ``event`` attribute.

    Reads ``event`` (or ``event_key``), ``params``, ``user_id``,
    ``tenant_id``, ``ip``, ``timezone`` and ``country`` from the record (or
    from its ``extra`` dict, as :func:`map_record` does), the fields it
    leaves out from the :class:`~hamustro_logging.context` in force, as
    :func:`map_record` does; an event still without a
    ``user_id``/``tenant_id`` gets the defaults. A
    record that sets ``is_testing`` (schema 1 only) is refused, never
    silently sent without it.

    >>> r = logging.makeLogRecord({"event": "signup", "params": {"plan": "pro"}, "created": 5})
    >>> map_record_v2(r, default_user_id="u-7").user_id
    b'u-7'
    """
    d = record.__dict__
    if event_key not in d:
        extra = d.get("extra")
        if not (type(extra) is dict and event_key in extra):
            return None
        d = extra
    name = d[event_key]
    fields = _CONTEXT.get()  # hamustro_logging.context(): None outside every context
    if fields is not None:
        d = overlay(d, fields)
    if "is_testing" in d:
        raise EventError(
            "is_testing", "does not exist in schema 2 (the collector has no such field); remove it"
        )
    user_id = d.get("user_id")
    tenant_id = d.get("tenant_id")
    return build_event_v2(
        name,
        d.get("params"),
        default_user_id if user_id is None else user_id,
        default_tenant_id if tenant_id is None else tenant_id,
        d.get("ip"),
        d.get("timezone"),
        d.get("country"),
        record.created,
        max_event_bytes=max_event_bytes,
    )


def record_body_v2(
    record: logging.LogRecord,
    max_event_bytes: int,
    event_key: str,
    default_tenant_id: str | None,
    default_user_id: str | None,
    default_ip: bytes | None,
) -> bytes | None:
    """Schema 2's :func:`record_body`: ``journal_body_v2(map_record_v2(...))`` in one pass, or None.

    The common event only: a non-empty str ``event``; ``user_id`` a
    non-empty str or an int, or none; ``tenant_id`` a non-empty str or
    none; ``params`` a dict of non-empty str names to str, int, bool or
    None values, or none; ``timezone`` a str or none (the local offset);
    no ``ip``, ``country`` or ``is_testing`` of its own. Every other record
    gets None, and the caller takes the full path (:func:`map_record_v2`).

    >>> import logging
    >>> from hamustro_logging.wire import journal_body_v2
    >>> r = logging.makeLogRecord({"event": "signup", "params": {"plan": "pro"}, "created": 5.0})
    >>> record_body_v2(r, 65536, "event", None, "u-7", None) == journal_body_v2(
    ...     map_record_v2(r, 65536, "event", None, "u-7"))
    True
    """
    found = _event_start(record, event_key)
    if found is None:
        return None
    head, d = found
    if "is_testing" in d or d.get("ip") is not None or d.get("country") is not None:
        return None
    user_id = d.get("user_id")
    if user_id is None:
        user_id = default_user_id
    tenant_id = d.get("tenant_id")
    if tenant_id is None:
        tenant_id = default_tenant_id
    timezone = d.get("timezone")
    params = d.get("params")
    at = record.created
    parts = [head[2]]
    n = head[3]
    try:
        if timezone is None:
            start, end, zone = local_offset.cached  # the cache, without a call
            if not start <= at < end:
                zone = local_offset(at)
        elif type(timezone) is str:
            zone = timezone.encode("utf-8")
        else:
            return None
        size = n + len(zone)
        parts += (b"\x22", varint(len(zone)), zone)
        if tenant_id is not None:
            if type(tenant_id) is not str or not tenant_id:
                return None
            tenant = tenant_id.encode("utf-8")
            size += len(tenant)
            parts += (b"\x2a", varint(len(tenant)), tenant)
        if user_id is not None:
            if type(user_id) is str and user_id:
                user = user_id.encode("utf-8")
            elif type(user_id) is int:
                user = str(user_id).encode("ascii")
            else:
                return None
            size += len(user)
            parts += (b"\x32", varint(len(user)), user)
        if default_ip is not None:
            parts += (b"\x3a", varint(len(default_ip)), default_ip)
        if params is not None:
            if type(params) is not dict:
                return None
            pairs: list[tuple[bytes, bytes]] = []
            for key, value in params.items():
                if type(key) is not str or not key:
                    return None
                kind = type(value)
                if kind is str:
                    text = value
                elif value is None:
                    continue
                elif kind is int:
                    text = str(value)
                elif kind is bool:
                    text = "true" if value else "false"
                else:
                    return None  # (JSON of other values: map_record_v2)
                pairs.append((key.encode("utf-8"), text.encode("utf-8")))
            encoded_params = encode_parameters(pairs)
            size += len(encoded_params)
            parts.append(encoded_params)
    except UnicodeEncodeError:  # map_record_v2 names the field and the cause
        return None
    if size > max_event_bytes:
        return None
    return b"".join(parts)


def extra_attributes(record: logging.LogRecord) -> dict[str, Any]:
    """The attributes a caller added to ``record`` (with ``extra=`` or a filter).

    Useful in a :meth:`HamustroHandler.map_record` override, for example to
    send every extra attribute as params.

    >>> r = logging.makeLogRecord({"msg": "x", "event": "e", "plan": "pro"})
    >>> extra_attributes(r)
    {'event': 'e', 'plan': 'pro'}
    """
    return {k: v for k, v in record.__dict__.items() if k not in _BLANK_RECORD_ATTRS}
