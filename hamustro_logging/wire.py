"""The collector's wire format: hashes, the signature, and Protobuf encoding.

Payloads are encoded by hand, field by field, in the order ``payload.proto``
numbers them, so the bytes equal what the generated ``payload_pb2`` module
would produce (``tests/test_wire.py`` proves it, also with hypothesis). Each
stored payload is kept already *framed* as a ``Collection.payloads`` entry
(tag 8, length, bytes), so a request body is just::

    collection_header(...) + framed_payload + framed_payload + ...

Protobuf merges concatenated fields, so nothing is decoded or re-encoded on
the way out.

>>> sha256hex("device-1")
'03204de92e11fc8c528139be419065920eb83dbff1a4663bbea455aa6e9702bd'
>>> session_id(sha256hex("device-1"), "client-1", "OS X 10.11", "1.0.0")
'c3b261989df9cb95efb791759dd37e16'
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator, Sequence
from typing import NamedTuple

__all__ = [
    "Event",
    "collection_header",
    "encode_payload",
    "encode_payloads",
    "iter_frames",
    "md5hex",
    "session_id",
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

    >>> varint(1).hex(), varint(300).hex()
    ('01', 'ac02')
    """
    if value < 128:
        return _SMALL[value]
    out = bytearray()
    while value >= 128:
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

    Fields in the order ``payload.proto`` numbers them; events logged in the
    same second share ``at``, whose varint is computed once.
    """
    out: list[bytes] = []
    append = out.append
    last_at = -1
    at_bytes = b""
    nr = first_nr
    for at, name, user_id, ip, params, is_testing in events:
        if at != last_at:
            last_at, at_bytes = at, varint(at)
        parts = [b"\x08", at_bytes, b"\x12", varint(len(name)), name, b"\x18", varint(nr)]
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
        body = b"".join(parts)
        append(b"\x42" + varint(len(body)) + body)
        nr += 1
    return out


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

    >>> from hamustro_logging.wire import Event, encode_payload
    >>> a = encode_payload(Event(1, b"a"), 1); b = encode_payload(Event(2, b"b"), 2)
    >>> list(iter_frames(a + b)) == [a, b]
    True
    """
    pos, end = 0, len(chunk)
    while pos < end:
        if chunk[pos] != 0x42:
            raise ValueError(f"corrupt chunk: expected a payload frame at byte {pos}")
        length, start = _read_varint(chunk, pos + 1)
        stop = start + length
        if stop > end:
            raise ValueError(f"corrupt chunk: frame at byte {pos} runs past the end")
        yield chunk[pos:stop]
        pos = stop
