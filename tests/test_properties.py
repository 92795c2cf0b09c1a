"""Properties of the mapping: any input is either refused with a clear ``EventError`` or encodes.

Whatever a caller logs (wrong types, lone surrogates, NaN, bytes and sets
inside params, out-of-range ids), ``build_event`` and ``HamustroHandler.map_record``
either raise :class:`EventError` with one line naming one of the five fields,
or return an event whose encoded payload decodes with the generated Protobuf
code and carries exactly what was logged. No other exception type escapes.

Which one is checked against the rules themselves, written again here
(:func:`problem`): the field an error names holds a value the collector
cannot take, and an event that encodes has none. A ``build_event`` that
refused every event, or named the wrong field, fails.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hamustro_logging import HamustroHandler, mapping, payload_pb2, payload_v2_pb2, wire
from hamustro_logging.collector.schema2 import _parameters_json
from hamustro_logging.contextfields import _CURRENT as _CONTEXT
from hamustro_logging.mapping import (
    EventError,
    build_event,
    map_record,
    map_record_v2,
    record_body,
    record_body_v2,
)

from .support import tracker_config

FIELDS = {"event", "user_id", "params", "is_testing", "ip"}
AT = 1_700_000_000
NR = 7
DEVICE = wire.sha256hex("device-1")
SESSION = wire.session_id(DEVICE, "client-1", "OS X 10.11", "1.0.0")
HEADER = wire.collection_header(DEVICE, "client-1", SESSION, "OS X 10.11", "1.0.0")

# -- strategies ------------------------------------------------------------------

SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
#: Any text, lone surrogates included (plain ``st.text()`` never makes one).
TEXT = st.one_of(st.text(), st.text(alphabet=st.one_of(st.characters(), SURROGATE)))

LEAF: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
    st.binary(max_size=8),
    st.sets(st.integers(), max_size=3),
)
#: Keys JSON can take (str, int, float, bool, None) and one it cannot (a tuple).
KEY: st.SearchStrategy[Any] = st.one_of(
    TEXT, st.integers(), st.floats(), st.booleans(), st.none(), st.tuples(st.integers())
)
JSONISH: st.SearchStrategy[Any] = st.recursive(
    LEAF,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(KEY, children, max_size=4),
    ),
    max_leaves=20,
)


def mostly(
    valid: st.SearchStrategy[Any], anything: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """``valid`` three times in four, else ``anything``.

    With five fields, a uniform pick would almost never make a whole event
    valid, and the encoding half of the property would go untested.
    """
    return st.integers(0, 3).flatmap(lambda i: anything if i == 0 else valid)


EVENT = mostly(st.text(min_size=1), st.one_of(TEXT, st.none(), st.integers(), st.binary()))
USER_ID = mostly(
    st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    st.one_of(st.integers(-(2**40), 2**40), st.booleans(), TEXT, st.floats()),
)
PARAMS = st.one_of(
    st.none(),
    TEXT,
    st.dictionaries(KEY, JSONISH, max_size=5),
    st.lists(JSONISH, max_size=5),
    st.integers(),
)
IS_TESTING = mostly(st.booleans(), st.one_of(st.integers(), st.none(), TEXT))
IP = mostly(st.one_of(st.none(), st.ip_addresses().map(str)), st.one_of(TEXT, st.integers()))


# -- the rules, written again (docs/handler.md, the README) -------------------------


def _unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def problem(field: str, value: object) -> bool:
    """Whether ``value`` is one the collector cannot take as ``field``."""
    if field == "event":
        return not (isinstance(value, str) and value != "" and _unicode(value))
    if field == "user_id":
        if value is None:
            return False
        return isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32
    if field == "is_testing":
        return value is not True and value is not False
    if field == "ip":
        if value is None:
            return False
        if not isinstance(value, str) or not value.isascii():
            return True
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return True
        return False
    assert field == "params"
    if value is None:
        return False
    if isinstance(value, str):
        return not _unicode(value)
    if not isinstance(value, (dict, list, tuple)):
        return True
    try:  # compact JSON, whatever JSON cannot encode through str(); no NaN or Infinity
        text = json.dumps(
            value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str
        )
    except (TypeError, ValueError, RecursionError):
        return True
    return not _unicode(text)


# -- the property ----------------------------------------------------------------


def check(
    build: Callable[[], wire.Event | None],
    event: object,
    user_id: object,
    params: object,
    is_testing: object,
    ip: object,
) -> None:
    """``build()`` refuses with a one-line EventError naming a bad field, or encodes what was given.

    Any other exception propagates and fails the test.
    """
    given = {"event": event, "user_id": user_id, "params": params}
    given.update(is_testing=is_testing, ip=ip)
    try:
        built = build()
    except EventError as exc:
        assert exc.field in FIELDS
        assert problem(exc.field, given[exc.field]), f"refused {exc.field}, a good value: {exc}"
        message = str(exc)
        assert len(message.splitlines()) == 1, message
        assert repr(exc.field) in message
        return
    bad = [field for field, value in given.items() if problem(field, value)]
    assert not bad, f"encoded an event whose {bad} the collector cannot take"
    assert built is not None
    collection = payload_pb2.Collection.FromString(HEADER + wire.encode_payload(built, NR))
    assert collection.IsInitialized()
    assert collection.session == SESSION
    (payload,) = collection.payloads
    assert (payload.at, payload.nr) == (AT, NR)
    assert payload.event == event
    if user_id is None:
        assert not payload.HasField("user_id")
    else:
        assert payload.user_id == user_id
    if ip is None:
        assert not payload.HasField("ip")
    else:
        assert payload.ip == ip
    assert payload.is_testing is is_testing
    if params is None:
        assert not payload.HasField("parameters")
    elif isinstance(params, str):
        assert payload.parameters == params
    else:
        json.loads(payload.parameters)  # valid (to Python's parser: NaN and Infinity pass)
        # the README's rule: compact JSON, whatever JSON cannot encode through str()
        compact = json.dumps(params, separators=(",", ":"), ensure_ascii=False, default=str)
        assert payload.parameters == compact


@settings(max_examples=300)
@given(event=EVENT, user_id=USER_ID, params=PARAMS, is_testing=IS_TESTING, ip=IP)
def test_build_event_refuses_clearly_or_encodes_what_was_given(
    event: object, user_id: object, params: object, is_testing: object, ip: object
) -> None:
    check(
        lambda: build_event(event, user_id, params, is_testing, ip, AT),
        event, user_id, params, is_testing, ip,
    )  # fmt: skip


@pytest.fixture(scope="module")
def handler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HamustroHandler]:
    """One handler for every example (module scope: hypothesis reruns the test body)."""
    queue_dir = tmp_path_factory.mktemp("properties")
    made = HamustroHandler(**tracker_config("http://127.0.0.1:9", queue_dir), close_timeout=0.5)
    yield made
    made.close()


@settings(max_examples=300)
@given(event=EVENT, user_id=USER_ID, params=PARAMS, is_testing=IS_TESTING, ip=IP)
def test_map_record_refuses_clearly_or_encodes_what_was_given(
    handler: HamustroHandler,
    event: object,
    user_id: object,
    params: object,
    is_testing: object,
    ip: object,
) -> None:
    record = logging.makeLogRecord(
        {
            "event": event,
            "user_id": user_id,
            "params": params,
            "is_testing": is_testing,
            "ip": ip,
            "created": AT + 0.75,
        }
    )

    def mapped() -> wire.Event | None:  # a schema-1 handler maps to schema 1's Event
        built = handler.map_record(record)
        assert built is None or isinstance(built, wire.Event)
        return built

    check(mapped, event, user_id, params, is_testing, ip)


# -- the one-pass encoding (mapping.record_body) is the full path's, or steps aside -----

#: Records' ``created``: the usual float, and what a filter might set instead.
CREATED = st.one_of(
    st.floats(0, 2**35),
    st.sampled_from([AT + 0.75, 0.0, -1.0, float("nan"), float("inf"), 2.0**35, 2.0**64]),
    st.integers(0, 2**36),
)
DEFAULT_IP = st.sampled_from([None, b"10.0.0.7", b"2001:db8::1"])
#: A context's fields (hamustro_logging.context), or none in force.
CONTEXT = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {}, optional={"user_id": USER_ID, "params": PARAMS, "is_testing": IS_TESTING}
    ),
)


@settings(max_examples=500)
@given(
    event=EVENT, user_id=USER_ID, params=PARAMS, is_testing=IS_TESTING,
    ip=mostly(st.none(), IP), created=mostly(st.floats(0, 2**35 - 1), CREATED),
    default_ip=DEFAULT_IP, default_is_testing=st.booleans(),
    max_event_bytes=st.sampled_from([65536, 40, 8]), context=mostly(st.none(), CONTEXT),
    absent=mostly(st.just(set()), st.sets(st.sampled_from(sorted(FIELDS)))),
)  # fmt: skip
# the edges of every plain type, each alone in an otherwise common event
@example("e", 2**32, None, False, None, AT + 0.5, None, False, 65536, None, set())
@example("e", -1, None, False, None, AT + 0.5, None, False, 65536, None, set())
@example("e", None, "x" * 40, False, None, AT + 0.5, None, False, 40, None, set())
@example("e" * 0x70, None, None, False, None, AT + 0.5, None, False, 65536, None, set())
@example("e", None, None, False, None, 2.0**35, None, False, 65536, None, set())
def test_the_one_pass_body_is_the_full_paths_or_none(
    event: object, user_id: object, params: object, is_testing: object, ip: object,
    created: float, default_ip: bytes | None, default_is_testing: bool,
    max_event_bytes: int, context: dict[str, Any] | None, absent: set[str],
) -> None:  # fmt: skip
    """``record_body`` gives the very bytes of ``journal_body(map_record(...))``, or None.

    None hands the record to the full path, which refuses it with its own
    message or maps it; a record the full path refuses never gets a body here.
    """
    fields = {"event": event, "user_id": user_id, "params": params}
    fields.update(is_testing=is_testing, ip=ip)
    record = logging.makeLogRecord(
        {**{k: v for k, v in fields.items() if k not in absent}, "created": created}
    )
    args = (default_is_testing, max_event_bytes, "event")
    with context_of(context):
        same_as_full_path(
            lambda: record_body(record, *args, default_ip),
            lambda: map_record(record, *args),
            lambda full: wire.journal_body(full, default_ip),
        )


def test_the_one_pass_body_takes_the_common_event() -> None:
    """The plain types go the one-pass way (a record_body that always said None would fail)."""
    extras: list[dict[str, Any]] = [
        {"event": "order_placed", "user_id": 7, "params": {"total": 12, "currency": "EUR"}},
        {"event": "signup"},
        {"event": "é" * 40, "user_id": 2**32 - 1, "params": "raw", "is_testing": True},
        {"event": "x", "user_id": None, "params": {"a": [1, 2.5, None, {"b": "c"}]}},
    ]
    for extra in extras:
        record = logging.makeLogRecord({**extra, "created": AT + 0.25})
        for default_ip in (None, b"10.0.0.7"):
            body, full = record_body(record, False, 65536, "event", default_ip), map_record(record)
            assert body is not None and full is not None, extra
            assert body == wire.journal_body(full, default_ip)
    with context_of({"user_id": 9, "params": {"plan": "pro"}}):
        record = logging.makeLogRecord({"event": "signup", "params": {"seats": 3}, "created": AT})
        record.created = AT + 0.5  # (a float, as the logging module makes it)
        body, full = record_body(record, False, 65536, "event", None), map_record(record)
    assert full is not None and full.user_id == 9
    assert body is not None and body == wire.journal_body(full)


def test_the_one_pass_start_kept_for_a_name_follows_each_events_second() -> None:
    """The start kept per event name (mapping._HEADS) is used only within its own second.

    The same name later, earlier (a clock stepped back), at a second's edges,
    and after a flood of names emptied the cache: every body is the full path's.
    """
    at = float(AT)
    seconds = [at, at + 1, at + 0.999, at - 5, at + 1, at + 2.5, 0.5, at + 2, at + 1.999999]
    for created in seconds + [at + i for i in range(mapping._HEADS_MAX + 2)]:
        for name in ("signup", f"made-{int(created) % 700}"):
            record = logging.makeLogRecord({"event": name, "user_id": 7, "created": created})
            body, full = record_body(record, False, 65536, "event", None), map_record(record)
            assert full is not None and body == wire.journal_body(full), (name, created)
    assert len(mapping._HEADS) <= mapping._HEADS_MAX


# schema 2's fields, the plain types mostly, anything else sometimes
NAME_V2 = mostly(st.text(min_size=1, max_size=8), st.one_of(TEXT, st.none(), st.integers()))
VALUE_V2 = mostly(
    st.one_of(st.text(max_size=8), st.integers(), st.booleans(), st.none()),
    st.one_of(JSONISH, TEXT),
)
PARAMS_V2 = mostly(
    st.one_of(st.none(), st.dictionaries(NAME_V2, VALUE_V2, max_size=4)),
    st.one_of(TEXT, st.lists(VALUE_V2, max_size=2), st.integers()),
)
TEXT_V2 = mostly(
    st.one_of(st.none(), st.text(min_size=1, max_size=8)), st.one_of(TEXT, st.integers())
)
USER_V2 = st.one_of(TEXT_V2, st.integers(-(2**40), 2**40), st.booleans())


@settings(max_examples=500)
@given(
    event=EVENT, params=PARAMS_V2, user_id=USER_V2, tenant_id=TEXT_V2, timezone=TEXT_V2,
    extra=st.fixed_dictionaries(
        {}, optional={"ip": IP, "country": TEXT_V2, "is_testing": st.booleans()}
    ),
    created=mostly(st.floats(0, 2**35 - 1), CREATED), default_ip=DEFAULT_IP,
    defaults=st.tuples(TEXT_V2, TEXT_V2), max_event_bytes=st.sampled_from([65536, 40, 12]),
    context=mostly(st.none(), st.fixed_dictionaries({}, optional={"params": PARAMS_V2})),
)  # fmt: skip
@example("e", {"k": None, "": "v"}, None, None, None, {}, AT + 0.5, None, (None, None), 65536, None)
# 215 bytes (e, +01:00, the pair's 208), the pair's tag and length bytes included
@example("e", {"k": "v" * 200}, None, None, "+01:00", {}, AT + 0.5, None, (None, None), 213, None)
def test_the_one_pass_body_of_schema_2_is_the_full_paths_or_none(
    event: object, params: object, user_id: object, tenant_id: object, timezone: object,
    extra: dict[str, Any], created: float, default_ip: bytes | None,
    defaults: tuple[Any, Any], max_event_bytes: int, context: dict[str, Any] | None,
) -> None:  # fmt: skip
    """``record_body_v2`` gives the bytes of ``journal_body_v2(map_record_v2(...))``, or None."""
    fields = {"event": event, "params": params, "user_id": user_id, "tenant_id": tenant_id}
    record = logging.makeLogRecord({**fields, "timezone": timezone, **extra, "created": created})
    args = (max_event_bytes, "event", *defaults)
    with context_of(context):
        same_as_full_path(
            lambda: record_body_v2(record, *args, default_ip),
            lambda: map_record_v2(record, *args),
            lambda full: wire.journal_body_v2(full, default_ip),
        )


def test_the_one_pass_body_of_schema_2_takes_the_common_event() -> None:
    """The plain types go the one-pass way in schema 2 too."""
    extras: list[dict[str, Any]] = [
        {"event": "order_placed", "user_id": "7", "params": {"total": 12, "currency": "EUR"}},
        {"event": "signup", "user_id": 7, "tenant_id": "acme", "timezone": "+01:00"},
        {"event": "é" * 40, "params": {"a": True, "b": None, "c": "x" * 300}},
    ]
    for extra in extras:
        record = logging.makeLogRecord({**extra, "created": AT + 0.25})
        for default_ip in (None, b"10.0.0.7"):
            body = record_body_v2(record, 65536, "event", None, "u-1", default_ip)
            full = map_record_v2(record, 65536, "event", None, "u-1")
            assert body is not None and full is not None, extra
            assert body == wire.journal_body_v2(full, default_ip)


def same_as_full_path(
    one_pass: Callable[[], bytes | None],
    full_path: Callable[[], Any],
    encode: Callable[[Any], bytes],
) -> None:
    """The one-pass body is None, or the full path's encoded event; None where it refuses."""
    body = one_pass()
    try:
        full = full_path()
    except EventError:
        assert body is None
        return
    if full is None:
        assert body is None
    elif body is not None:
        assert body == encode(full)


@contextlib.contextmanager
def context_of(fields: dict[str, Any] | None) -> Iterator[None]:
    """``fields`` in force as a context's (set on the variable: a bad value is the test's input)."""
    if fields is None:
        yield
        return
    token = _CONTEXT.set(fields)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


# -- inputs the strategies above do not reach, or reach too rarely ----------------


@pytest.mark.parametrize("ip", ["fe80::1%\u00e9th0", "::1%\ud800"])
def test_ipv6_with_a_non_ascii_scope_id_is_an_ip_error(ip: str) -> None:
    with pytest.raises(EventError) as caught:
        build_event("e", ip=ip, at=AT)
    assert caught.value.field == "ip"


def test_deeply_nested_params_are_a_params_error() -> None:
    nested: list[Any] = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(EventError) as caught:
        build_event("e", params=nested, at=AT)
    assert caught.value.field == "params"


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_params_with_non_finite_floats_are_refused_or_strict_json(value: float) -> None:
    """Bare NaN/Infinity is not JSON (RFC 8259): refused as a params error, or never sent."""
    try:
        event = build_event("e", params={"a": [value]}, at=AT)
    except EventError as exc:
        assert exc.field == "params"
        return
    assert event.params is not None
    json.loads(event.params, parse_constant=_refuse_constant)


# -- schema 2: the env option and the parameters -------------------------------------

ENV_NAME = st.sampled_from(sorted(wire.ENVIRONMENTS)).flatmap(
    lambda name: st.sampled_from([name, name.lower(), name.title(), f" {name.lower()} "])
)
ENV_ANYTHING: st.SearchStrategy[Any] = st.one_of(
    ENV_NAME,
    st.integers(-3, 15),
    st.integers(-3, 15).map(str),
    st.booleans(),
    st.floats(),
    st.none(),
    TEXT,
    st.binary(max_size=8),
)


@given(value=ENV_ANYTHING)
def test_environment_is_the_enum_number_or_a_one_line_env_error(value: Any) -> None:
    try:
        number = wire.environment(value)
    except ValueError as exc:
        message = str(exc)
        assert message.startswith("env must be ")
        assert len(message.splitlines()) == 1
        assert message.endswith(f"got {value!r}")
        return
    if isinstance(value, str) and not value.strip().isdigit():
        assert payload_v2_pb2.Environment.Value(value.strip().upper()) == number
    else:
        assert number == int(value) and 0 <= number <= 11
    # Whatever was accepted makes a header the generated code reads back.
    header = wire.collection_header_v2(DEVICE, "c", "s", "v", "p", number)
    assert payload_v2_pb2.Collection.FromString(header).env == number


PAIRS = st.lists(st.tuples(st.text(max_size=6), st.text(max_size=6)), max_size=6)


@given(pairs=PAIRS)
def test_parameters_encode_every_pair_and_are_stored_as_one_json_object(
    pairs: list[tuple[str, str]],
) -> None:
    """Every pair survives the wire in order; the collector stores them as a Go map would."""
    params = wire.encode_parameters((n.encode(), v.encode()) for n, v in pairs)
    (frame,) = wire.encode_payloads_v2([wire.Event2(AT, b"e", params=params)], NR)
    (payload,) = payload_v2_pb2.Collection.FromString(frame).payloads
    assert payload.IsInitialized()
    assert [(p.name, p.value) for p in payload.parameters] == pairs
    stored = _parameters_json(payload.parameters)
    assert json.loads(stored) == dict(pairs)  # a repeated name keeps its last value
    assert list(json.loads(stored)) == sorted(dict(pairs))
