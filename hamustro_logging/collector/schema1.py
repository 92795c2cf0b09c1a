"""Schema 1's checks, in the collector's order, and its events as that collector stores them.

The order and the answers are those of the upstream collector this
library's schema 1 speaks to (the table in ``docs/protocol.md``): the
signature (:func:`.checks.signature`), then ``Content-Type``, the body as a
``Collection`` with every required field, the session, at least one
payload. Each accepted payload becomes one JSON line: the collection's
fields, then the payload's.

Which thread calls what: the server's connection thread calls
:func:`check` once a request's body is read; it holds no lock and no state.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError

from .. import wire
from ..payload_pb2 import Collection
from .checks import Answer, Stamps, encode_json, media_type, missing_fields, raw, signature, text


def check(headers: Any, body: bytes, secret: str, keep_events: bool) -> Answer:
    """The collector's checks, in the collector's order (docs/protocol.md).

    ``keep_events``: also hand back the accepted events as dicts (not only
    their JSON lines).
    """
    refused = signature(headers, body, secret)
    if refused is not None:
        return refused
    if media_type(headers) != "application/protobuf":
        return Answer(400, "Unsupported or missing Content-Type")
    collection = Collection()
    try:
        collection.ParseFromString(body)
    except DecodeError as exc:
        return Answer(400, f"Unmarshaling protobuf is failed: {exc}")
    if not collection.IsInitialized():
        missing = ", ".join(missing_fields(collection))
        return Answer(400, f"Unmarshaling protobuf is failed: required field not set: {missing}")
    device_id, client_id = collection.device_id, collection.client_id
    system_version, product_version = collection.system_version, collection.product_version
    session = collection.session
    fields = (device_id, client_id, system_version, product_version, session)
    if all(isinstance(f, str) for f in fields):
        expected_session = wire.session_id(device_id, client_id, system_version, product_version)
        session_ok = session == expected_session
    else:  # invalid UTF-8 somewhere: hash the bytes as sent, as Go does
        joined = b":".join(raw(f) for f in fields[:4])
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
        "system": text(collection.system) if has("system") else None,
        "product_git_hash": text(collection.product_git_hash) if has("product_git_hash") else None,
    }
    # The collection's fields are encoded once per request: each line is
    # that prefix plus the payload's own fields.
    prefix = encode_json(base)[:-1] + ","
    stamps = Stamps(headers)
    events = []
    lines = []
    for payload in payloads:
        at, ip = payload.at, stamps.ip(payload.ip)
        has = payload.HasField
        part = {
            "at": at,
            "at_utc": stamps.utc(at),
            "event": text(payload.event),
            "nr": payload.nr,
            "user_id": payload.user_id if has("user_id") else None,
            "ip": text(ip),
            "parameters": text(payload.parameters) if has("parameters") else None,
            "is_testing": payload.is_testing,
        }
        lines.append(prefix + encode_json(part)[1:])
        if keep_events:
            events.append(base | part)
    lines.append("")  # the last line's newline
    return Answer(200, events=events, text="\n".join(lines), n_events=len(payloads))
