"""The collector's wire format: hashes, the signature, and Protobuf encoding.

Two schemas: schema 1 (``proto/payload.proto``, the default) and schema 2
(``proto/payload_v2.proto``, upstream's newest collector). Payloads are
encoded by hand, field by field, in the order the ``.proto`` numbers them,
so the bytes equal what the generated ``payload_pb2`` / ``payload_v2_pb2``
modules would produce (``tests/test_wire.py`` proves it, also with
hypothesis). Each stored payload is kept already *framed* as a
``Collection.payloads`` entry (tag, length, bytes; the tag is field 8 in
schema 1, field 15 in schema 2), so a request body is just::

    collection_header(...) + framed_payload + framed_payload + ...

Protobuf merges concatenated fields, so nothing is decoded or re-encoded on
the way out.

>>> sha256hex("device-1")
'03204de92e11fc8c528139be419065920eb83dbff1a4663bbea455aa6e9702bd'
>>> session_id(sha256hex("device-1"), "client-1", "OS X 10.11", "1.0.0")
'c3b261989df9cb95efb791759dd37e16'
>>> session_id_v2(sha256hex("device-1"), "client-1", "OS X 10.11", "1.0.0", environment("beta"))
'305b8e19b4fb1c42b4adffaa373aa046'
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

__all__ = [
    "ENVIRONMENTS",
    "Event",
    "Event2",
    "collection_header",
    "collection_header_v2",
    "count_frames",
    "encode_parameters",
    "encode_payload",
    "encode_payloads",
    "encode_payloads_v2",
    "environment",
    "frame_schema",
    "iter_frames",
    "journal_body",
    "journal_body_v2",
    "md5hex",
    "number_bodies",
    "session_id",
    "session_id_v2",
    "sha256hex",
    "signature",
    "varint",
]

UINT32_MAX = 0xFFFFFFFF
UINT64_MAX = 0xFFFFFFFFFFFFFFFF


class Event(NamedTuple):
    """One validated event, before it has its ``nr``.

    Strings are already UTF-8 bytes: encoding them is where invalid Unicode
    (a lone surrogate) is caught, on the caller's thread, with a clear error.
    """

    at: int
    event: bytes
    user_id: int | None = None
    ip: bytes | None = None
    params: bytes | None = None
    is_testing: bool = False


class Event2(NamedTuple):
    """One validated schema-2 event, before it has its ``nr``.

    Strings are already UTF-8 bytes, as in :class:`Event`; ``params`` holds
    the already encoded ``Payload.parameters`` entries (see
    :func:`encode_parameters`), so the hot path only concatenates.
    """

    at: int
    event: bytes
    timezone: bytes | None = None
    tenant_id: bytes | None = None
    user_id: bytes | None = None
    ip: bytes | None = None
    country: bytes | None = None
    params: bytes | None = None


#: Schema 2's ``Environment`` enum (``payload_v2.proto``): name -> number.
ENVIRONMENTS: dict[str, int] = {
    "PRODUCTION": 0,
    "GENERAL_AVAILABILITY": 1,
    "RELEASE_TO_MARKETING": 2,
    "RELEASE_CANDIDATE": 3,
    "BETA": 4,
    "ALPHA": 5,
    "WEEKLY": 6,
    "NIGHTLY": 7,
    "STAGING": 8,
    "QUALITY_ASSURANCE": 9,
    "TESTING": 10,
    "DEVELOPMENT": 11,
}
_ENV_NUMBERS = frozenset(ENVIRONMENTS.values())


def environment(value: object) -> int:
    """Schema 2's ``env`` as its number: a name in any case, or a number 0-11.

    A number may be an ``int`` or a string of ASCII digits (as read from an
    environment variable). Anything else is a ``ValueError`` naming ``env``.

    >>> environment("beta"), environment("DEVELOPMENT"), environment(0), environment("4")
    (4, 11, 0, 4)
    >>> environment("prod")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: env must be an Environment name (PRODUCTION, ...) or its number 0-11, got 'prod'
    """
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        number = int(text) if text.isascii() and text.isdigit() else ENVIRONMENTS.get(text.upper())
    if number is None or number not in _ENV_NUMBERS:
        names = ", ".join(ENVIRONMENTS)
        raise ValueError(
            f"env must be an Environment name ({names}, in any case) "
            f"or its number 0-11, got {value!r}"
        )
    return number


def sha256hex(text: str) -> str:
    """Lowercase hex SHA-256 of ``text`` encoded as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def md5hex(data: bytes | str) -> str:
    """Lowercase hex MD5 (the spec's ``md5hex``); not used for secrecy."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def session_id(
    device_id_hash: str, client_id: str, system_version: str, product_version: str
) -> str:
    """md5hex(device_id + ":" + client_id + ":" + system_version + ":" + product_version).

    ``device_id_hash`` is the already hashed id (what the collection carries).
    """
    return md5hex(f"{device_id_hash}:{client_id}:{system_version}:{product_version}")


def session_id_v2(
    device_id: str, client_id: str, system_version: str, product_version: str, env: int
) -> str:
    """Schema 2's session: md5hex(device_id + ":" + ... + ":" + product_version + ":" + env).

    ``device_id`` is the already hashed id (what the collection carries);
    ``env`` is the enum's decimal number (BETA is ``4``), never its name.
    """
    return md5hex(f"{device_id}:{client_id}:{system_version}:{product_version}:{env:d}")


def signature(time_header: str, body: bytes, secret: str) -> str:
    """base64(sha256(time + "|" + md5hex(body) + "|" + secret)).

    >>> body = bytes.fromhex("0a0161")
    >>> signature("1454514088", body, "s") == signature("1454514088", body, "s")
    True
    """
    digest = hashlib.sha256(f"{time_header}|{md5hex(body)}|{secret}".encode()).digest()
    return base64.b64encode(digest).decode("ascii")


_SMALL = [bytes((i,)) for i in range(128)]


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int.

    >>> varint(1).hex(), varint(300).hex(), varint(1_700_000_000).hex()
    ('01', 'ac02', '80e2cfaa06')
    """
    # Unrolled for what an event holds (lengths, numbers, epoch seconds):
    # this runs for every event, on the app's thread and the spool's.
    if value < 0x80:
        return _SMALL[value]
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    if value < 0x200000:
        return bytes((value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14))
    if value < 0x10000000:
        return bytes(
            (value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14 & 0x7F | 0x80, value >> 21)
        )
    if value < 0x800000000:  # (epoch seconds until 3058)
        return bytes(
            (
                value & 0x7F | 0x80,
                value >> 7 & 0x7F | 0x80,
                value >> 14 & 0x7F | 0x80,
                value >> 21 & 0x7F | 0x80,
                value >> 28,
            )
        )
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string_field(tag: bytes, data: bytes) -> bytes:
    return tag + varint(len(data)) + data


def collection_header(
    device_id: str,
    client_id: str,
    session: str,
    system_version: str,
    product_version: str,
    system: str | None = None,
    product_git_hash: str | None = None,
) -> bytes:
    """Fields 1-7 of a ``Collection``: everything but the payloads."""
    parts = [
        _string_field(b"\x0a", device_id.encode()),
        _string_field(b"\x12", client_id.encode()),
        _string_field(b"\x1a", session.encode()),
        _string_field(b"\x22", system_version.encode()),
        _string_field(b"\x2a", product_version.encode()),
    ]
    if system is not None:
        parts.append(_string_field(b"\x32", system.encode()))
    if product_git_hash is not None:
        parts.append(_string_field(b"\x3a", product_git_hash.encode()))
    return b"".join(parts)


def encode_payload(event: Event, nr: int, default_ip: bytes | None = None) -> bytes:
    """One ``Payload``, framed as a ``Collection.payloads`` entry (field 8).

    ``default_ip`` is used when the event has no ``ip`` of its own; when both
    are None the field is left out and the collector fills it in.
    """
    return encode_payloads((event,), nr, default_ip)[0]


def encode_payloads(
    events: Sequence[Event], first_nr: int, default_ip: bytes | None = None
) -> list[bytes]:
    """Framed payloads for a run of events numbered from ``first_nr`` on.

    Fields in the order ``payload.proto`` numbers them (see :func:`journal_body`).
    """
    return number_bodies([journal_body(e, default_ip) for e in events], first_nr, 1)


def collection_header_v2(
    device_id: str,
    client_id: str,
    session: str,
    system_version: str,
    product_version: str,
    env: int,
    *,
    device_make: str | None = None,
    device_model: str | None = None,
    system: str | None = None,
    system_language: str | None = None,
    browser: str | None = None,
    browser_version: str | None = None,
    product_git_hash: str | None = None,
    product_language: str | None = None,
) -> bytes:
    """Fields 1-14 of a schema-2 ``Collection``: everything but the payloads.

    ``env`` is the enum's number (see :func:`environment`); a number the
    enum does not have is a ``ValueError`` (the collector would refuse it).
    """
    if env not in _ENV_NUMBERS:
        raise ValueError(f"env must be an Environment number 0-11, got {env!r}")
    parts = [
        _string_field(b"\x0a", device_id.encode()),
        _string_field(b"\x12", client_id.encode()),
        _string_field(b"\x1a", session.encode()),
        _string_field(b"\x22", system_version.encode()),
        _string_field(b"\x2a", product_version.encode()),
        b"\x30" + varint(env),
    ]
    optional = (
        (b"\x3a", device_make),
        (b"\x42", device_model),
        (b"\x4a", system),
        (b"\x52", system_language),
        (b"\x5a", browser),
        (b"\x62", browser_version),
        (b"\x6a", product_git_hash),
        (b"\x72", product_language),
    )
    parts.extend(_string_field(tag, value.encode()) for tag, value in optional if value is not None)
    return b"".join(parts)


def encode_parameters(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Schema 2's repeated ``Payload.parameters`` (field 9), ready for :class:`Event2`.

    Each ``(name, value)`` pair (UTF-8 bytes) becomes one ``Parameter`` with
    both of its required fields set; the caller leaves out pairs it has no
    value for. No pairs give ``b""``.

    >>> encode_parameters([(b"plan", b"pro")]).hex()
    '4a0b0a04706c616e120370726f'
    """
    out = []
    for name, value in pairs:
        inner = b"\x0a" + varint(len(name)) + name + b"\x12" + varint(len(value)) + value
        out.append(b"\x4a" + varint(len(inner)) + inner)
    return b"".join(out)


def encode_payloads_v2(
    events: Sequence[Event2], first_nr: int, default_ip: bytes | None = None
) -> list[bytes]:
    """Schema 2's :func:`encode_payloads`: framed as ``Collection.payloads`` (field 15).

    Fields in the order ``payload_v2.proto`` numbers them; ``default_ip``
    as in schema 1.
    """
    return number_bodies([journal_body_v2(e, default_ip) for e in events], first_nr, 2)


def journal_body(event: Event, default_ip: bytes | None = None) -> bytes:
    """A schema-1 event as a journal record: its payload without ``nr``, split where ``nr`` goes.

    ``b"E" + varint(len(head)) + head + tail``: ``head`` holds the fields
    before ``nr`` (1 and 2), ``tail`` those after it, so
    :func:`number_bodies` makes the framed payload of
    :func:`encode_payloads` by concatenation.

    >>> from hamustro_logging.payload_pb2 import Collection
    >>> (frame,) = number_bodies([journal_body(Event(1, b"a", 7))], 5, 1)
    >>> p = Collection.FromString(frame).payloads[0]
    >>> (p.at, p.event, p.nr, p.user_id)
    (1, 'a', 5, 7)
    """
    at, name, user_id, ip, params, is_testing = event
    head = b"\x08" + varint(at) + b"\x12" + varint(len(name)) + name
    parts = [b"E", varint(len(head)), head]
    if user_id is not None:
        parts += (b"\x20", varint(user_id))
    if ip is None:
        ip = default_ip
    if ip is not None:
        parts += (b"\x2a", varint(len(ip)), ip)
    if params is not None:
        parts += (b"\x32", varint(len(params)), params)
    if is_testing:
        parts.append(b"\x38\x01")
    return b"".join(parts)


def journal_body_v2(event: Event2, default_ip: bytes | None = None) -> bytes:
    """Schema 2's :func:`journal_body`.

    >>> from hamustro_logging.payload_v2_pb2 import Collection
    >>> e = Event2(1, b"a", user_id=b"u", params=encode_parameters([(b"k", b"v")]))
    >>> p = Collection.FromString(number_bodies([journal_body_v2(e)], 3, 2)[0]).payloads[0]
    >>> (p.nr, p.user_id, p.parameters[0].name, p.parameters[0].value)
    (3, 'u', 'k', 'v')
    """
    at, name, timezone, tenant_id, user_id, ip, country, params = event
    head = b"\x08" + varint(at) + b"\x12" + varint(len(name)) + name
    parts = [b"E", varint(len(head)), head]
    if timezone is not None:
        parts += (b"\x22", varint(len(timezone)), timezone)
    if tenant_id is not None:
        parts += (b"\x2a", varint(len(tenant_id)), tenant_id)
    if user_id is not None:
        parts += (b"\x32", varint(len(user_id)), user_id)
    if ip is None:
        ip = default_ip
    if ip is not None:
        parts += (b"\x3a", varint(len(ip)), ip)
    if country is not None:
        parts += (b"\x42", varint(len(country)), country)
    if params:
        parts.append(params)
    return b"".join(parts)


#: A schema's ``Collection.payloads`` tag (field 8 in schema 1, 15 in schema 2).
FRAME_TAGS = {1: b"\x42", 2: b"\x7a"}


def number_bodies(bodies: Sequence[bytes], first_nr: int, schema: int) -> list[bytes]:
    """Framed payloads from journal bodies (see :func:`journal_body`), numbered from ``first_nr``.

    Raises ``ValueError`` for a body that is not an event record.
    """
    tag = FRAME_TAGS[schema]
    out: list[bytes] = []
    append = out.append
    join = b"".join
    nr = first_nr
    for body in bodies:
        # b"E", the head's length (one byte below 128: the common case), head, tail
        head_len = body[1] if len(body) > 1 else 0x80
        if head_len < 0x80 and body[0] == 0x45:  # (0x45: "E")
            start = 2
        else:
            if body[:1] != b"E":
                raise ValueError("corrupt journal record: not an event")
            head_len, start = _read_varint(body, 1)
        split = start + head_len
        if split > len(body):
            raise ValueError("corrupt journal record: its head runs past its end")
        number = varint(nr)
        size = len(body) - start + 1 + len(number)
        append(
            join(
                (
                    tag,
                    _SMALL[size] if size < 0x80 else varint(size),
                    body[start:split],
                    b"\x18",
                    number,
                    body[split:],
                )
            )
        )
        nr += 1
    return out


def count_frames(chunk: bytes) -> int:
    """How many payload frames ``chunk`` holds; -1 if it is not a run of frames of one schema.

    The check a claim makes of every chunk it reads (see :func:`iter_frames`),
    without making the frames.

    >>> from hamustro_logging.wire import Event, encode_payload
    >>> a = encode_payload(Event(1, b"a"), 1)
    >>> count_frames(a + a), count_frames(a[:-1]), count_frames(b"")
    (2, -1, 0)
    """
    end = len(chunk)
    if not end:
        return 0
    tag = chunk[0]
    if tag not in _FRAME_SCHEMAS:
        return -1
    pos = count = 0
    try:
        while pos < end:
            if chunk[pos] != tag:
                return -1
            length = chunk[pos + 1]
            if length < 0x80:
                pos += 2 + length
            else:
                length, start = _read_varint(chunk, pos + 1)
                pos = start + length
            count += 1
    except IndexError:
        return -1
    return count if pos == end else -1


#: A frame's first byte (its ``Collection.payloads`` tag) -> its schema.
_FRAME_SCHEMAS = {0x42: 1, 0x7A: 2}


def frame_schema(frame: bytes) -> int:
    """The schema of a framed payload (or of a chunk of them): 1 or 2.

    >>> frame_schema(encode_payload(Event(1, b"a"), 1))
    1
    >>> frame_schema(encode_payloads_v2([Event2(1, b"a")], 1)[0])
    2
    """
    schema = _FRAME_SCHEMAS.get(frame[0]) if frame else None
    if schema is None:
        raise ValueError("corrupt frame: expected a payload frame of schema 1 or 2 at byte 0")
    return schema


def _read_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def iter_frames(chunk: bytes) -> Iterator[bytes]:
    """Split a run of framed payloads back into its frames (each still framed).

    Either schema; a chunk holds frames of one schema only (the first
    frame's), so a frame of the other one is corruption too.

    >>> from hamustro_logging.wire import Event, encode_payload
    >>> a = encode_payload(Event(1, b"a"), 1); b = encode_payload(Event(2, b"b"), 2)
    >>> list(iter_frames(a + b)) == [a, b]
    True
    """
    pos, end = 0, len(chunk)
    tag = chunk[0] if end and chunk[0] in _FRAME_SCHEMAS else 0x42
    while pos < end:
        if chunk[pos] != tag:
            raise ValueError(f"corrupt chunk: expected a payload frame at byte {pos}")
        length, start = _read_varint(chunk, pos + 1)
        stop = start + length
        if stop > end:
            raise ValueError(f"corrupt chunk: frame at byte {pos} runs past the end")
        yield chunk[pos:stop]
        pos = stop
