"""Schema 2's checks, in the collector's order, and its events as that collector stores them.

The order and the answers are those of upstream's newest collector (the
table in ``docs/protocol.md``): the signature (:func:`.checks.signature`),
then ``Content-Type`` (Protobuf or JSON), the body as a ``Collection`` with
every required field (a JSON body parsed as Go's jsonpb does), the session
with the env's number, at least one payload. Each accepted payload becomes
one JSON line, stored as that collector stores it: ``env`` by name, the
parameters as one JSON object string.

Which thread calls what: the server's connection thread calls
:func:`check` once a request's body is read; it holds no lock and no state.
"""

from __future__ import annotations

import json
import re
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from .. import wire
from ..payload_v2_pb2 import Collection
from .checks import Answer, Stamps, encode_json, media_type, missing_fields, raw, signature, text

_ENV_NAMES = {number: name for name, number in wire.ENVIRONMENTS.items()}
#: What Go's encoding/json escapes beyond what Python's does (ensure_ascii=False).
_GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)
_encode_go_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

#: Schema 2's optional Collection fields, recorded as None when unset.
_OPTIONAL_V2 = (
    "device_make",
    "device_model",
    "system",
    "system_language",
    "browser",
    "browser_version",
    "product_git_hash",
    "product_language",
)


def check(headers: Any, body: bytes, secret: str, keep_events: bool) -> Answer:
    """The collector's checks, in the collector's order (docs/protocol.md).

    ``keep_events``: also hand back the accepted events as dicts (not only
    their JSON lines).
    """
    refused = signature(headers, body, secret)
    if refused is not None:
        return refused
    collection = Collection()
    content_type = media_type(headers)
    is_json = content_type == "application/json"
    if is_json:
        error = _parse_json(body, collection)
        if error is not None:
            return Answer(400, f"Unmarshaling json collection is failed: {error}")
        # Its own check of a JSON collection looks at the collection's and
        # the payloads' required fields, never at a Parameter's.
        missing = [m for m in missing_fields(collection) if "parameters[" not in m]
        if missing:
            return Answer(
                400,
                "Unmarshaled json collection is failed: required field not set: "
                + ", ".join(missing),
            )
    elif content_type == "application/protobuf":
        try:
            collection.ParseFromString(body)
        except (DecodeError, UnicodeDecodeError) as exc:
            # UnicodeDecodeError: only the pure-Python runtime (protobuf < 4.21)
            # checks a proto2 string's UTF-8; upb, like Go, keeps the bytes.
            return Answer(400, f"Unmarshaling protobuf is failed: {exc}")
        if not collection.IsInitialized():
            unset = ", ".join(missing_fields(collection))
            return Answer(400, f"Unmarshaling protobuf is failed: required field not set: {unset}")
    else:
        return Answer(400, "Unsupported or missing Content-Type")
    device_id, client_id = collection.device_id, collection.client_id
    system_version, product_version = collection.system_version, collection.product_version
    session, env = collection.session, collection.env
    fields = (device_id, client_id, system_version, product_version, session)
    if all(isinstance(f, str) for f in fields):
        expected_session = wire.session_id_v2(
            device_id, client_id, system_version, product_version, env
        )
        session_ok = session == expected_session
    else:  # invalid UTF-8 somewhere: hash the bytes as sent, as Go does
        joined = b":".join([*(raw(f) for f in fields[:4]), str(env).encode()])
        session_ok = raw(session) == wire.md5hex(joined).encode()
    if not session_ok:
        return Answer(400, "Collection's session attribute is invalid")
    payloads = collection.payloads
    if not payloads:
        return Answer(204)
    has = collection.HasField
    base: dict[str, Any] = {
        "session": text(session),
        "device_id": text(device_id),
        "client_id": text(client_id),
        "system_version": text(system_version),
        "product_version": text(product_version),
        "env": _ENV_NAMES[env],
    }
    for name in _OPTIONAL_V2:
        base[name] = text(getattr(collection, name)) if has(name) else None
    prefix = encode_json(base)[:-1] + ","
    stamps = Stamps(headers)
    events = []
    lines = []
    crash = False
    for payload in payloads:
        parameters = payload.parameters
        if is_json and any(not (p.HasField("name") and p.HasField("value")) for p in parameters):
            crash = True  # a protobuf body never gets here: refused as not initialized
            break
        at, ip = payload.at, stamps.ip(payload.ip)
        has = payload.HasField
        part = {
            "at": at,
            "at_utc": stamps.utc(at),
            "event": text(payload.event),
            "nr": payload.nr,
            "timezone": text(payload.timezone) if has("timezone") else None,
            "tenant_id": text(payload.tenant_id) if has("tenant_id") else None,
            "user_id": text(payload.user_id) if has("user_id") else None,
            "ip": text(ip),
            "country": text(payload.country) if has("country") else None,
            "parameters": _parameters_json(parameters),
        }
        lines.append(prefix + encode_json(part)[1:])
        if keep_events:
            events.append(base | part)
    n_events = len(lines)
    if lines:
        lines.append("")  # the last line's newline
    return Answer(200, events=events, text="\n".join(lines), n_events=n_events, crash=crash)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogates_replaced(value: Any) -> Any:
    """Strings in a parsed JSON value with lone surrogates turned into U+FFFD, as Go decodes."""
    if isinstance(value, str):
        return value if value.isascii() else _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_lone_surrogates_replaced(item) for item in value]
    if isinstance(value, dict):
        return {
            _lone_surrogates_replaced(k): _lone_surrogates_replaced(v) for k, v in value.items()
        }
    return value


def _refuse_constant(name: str) -> None:
    raise ValueError(f"invalid JSON value {name}")


def _parse_json(body: bytes, collection: Message) -> str | None:
    """Parse a schema-2 JSON body into ``collection``; the error, or None.

    As the real collector's jsonpb does: field names in snake_case or
    camelCase, ``env`` by name or number, unknown fields refused; invalid
    UTF-8 and lone surrogates become U+FFFD. Required fields are left to
    the caller.
    """
    try:
        data = json.loads(body.decode("utf-8", "replace"), parse_constant=_refuse_constant)
        if not isinstance(data, dict):
            return f"expected a JSON object, got {type(data).__name__}"
        json_format.ParseDict(_lone_surrogates_replaced(data), collection)
    except (json_format.Error, ValueError, TypeError, RecursionError) as exc:
        return str(exc)
    return None


def _parameters_json(parameters: Any) -> str:
    """Schema 2's parameters as the real collector stores them: one JSON object string.

    It fills a Go ``map[string]string`` (a repeated name keeps its last
    value) and marshals it with encoding/json: keys sorted, compact, ``<``,
    ``>``, ``&``, U+2028 and U+2029 escaped; ``{}`` for none.
    """
    pairs = {text(p.name): text(p.value) for p in parameters}
    return _encode_go_json(dict(sorted(pairs.items()))).translate(_GO_ESCAPES)
