"""A tracker's events in its schema: built from ``track_event``'s arguments, and encoded.

:func:`tracked_event` turns the arguments of ``track_event`` into a
validated event of the tracker's schema (the builders of
:mod:`hamustro_logging.mapping` check each field), refusing a field of the
other schema by name. :func:`encoding` gives the collection header that
every request of the tracker carries and the encoder of its payloads.

Who calls what: ``ClientTracker.track_event`` (the application's thread)
calls :func:`tracked_event`; its constructor calls :func:`encoding`. Pure
functions: any thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..mapping import (
    SCHEMA1_ONLY_FIELDS,
    SCHEMA2_ONLY_FIELDS,
    EventError,
    build_event,
    build_event_v2,
)
from ..wire import (
    Event,
    Event2,
    collection_header,
    collection_header_v2,
    encode_payloads,
    encode_payloads_v2,
)
from .options import Settings

#: A validated event of either schema (a tracker stores only its own schema's).
TrackedEvent = Event | Event2

#: Encodes events as payloads: (events, first nr, default ip) -> one frame each.
Encoder = Callable[[Sequence[Any], int, bytes | None], list[bytes]]


def tracked_event(
    schema: int,
    max_event_bytes: int,
    user: tuple[str | None, str | None],
    event: str,
    args: tuple[Any, ...],
    fields: dict[str, Any],
) -> TrackedEvent:
    """``track_event(event, *args, **fields)`` as a validated event of ``schema``, at now.

    ``user``: schema 2's (tenant_id, user_id) of ``set_user``, for an event
    without its own.
    """
    if schema == 1:
        for name in SCHEMA2_ONLY_FIELDS:
            if name in fields:
                raise EventError(name, "exists only in schema 2; this tracker uses schema 1")
        return _event_v1(max_event_bytes, event, *args, **fields)
    for name in SCHEMA1_ONLY_FIELDS:
        if name in fields:
            raise EventError(name, "does not exist in schema 2; remove it")
    if len(args) > 1:  # schema 1's track_event(event, user_id, params, ...)
        raise TypeError(
            "with schema 2, track_event takes (event, params=None) positionally and "
            "user_id, tenant_id, ip, timezone, country as keywords"
        )
    return _event_v2(max_event_bytes, user, event, *args, **fields)


def _event_v1(
    max_event_bytes: int,
    event: str,
    /,
    user_id: int | None = None,
    params: str | dict[str, Any] | list[Any] | None = None,
    is_testing: bool = False,
    ip: str | None = None,
) -> Event:
    return build_event(
        event, user_id, params, is_testing, ip, time.time(), max_event_bytes=max_event_bytes
    )


def _event_v2(
    max_event_bytes: int,
    default_user: tuple[str | None, str | None],
    event: str,
    /,
    params: Mapping[str, object] | None = None,
    *,
    user_id: str | int | None = None,
    tenant_id: str | None = None,
    ip: str | None = None,
    timezone: str | None = None,
    country: str | None = None,
) -> Event2:
    tenant, user = default_user
    return build_event_v2(
        event, params, user if user_id is None else user_id,
        tenant if tenant_id is None else tenant_id, ip, timezone, country, time.time(),
        max_event_bytes=max_event_bytes,
    )  # fmt: skip


def encoding(options: Settings, session: str) -> tuple[bytes, Encoder]:
    """The collection header (the fields before the payloads) and the payloads' encoder."""
    o = options
    if o.env is None:
        header = collection_header(
            o.device_id, o.client_id, session, o.system_version, o.product_version,
            o.system, o.product_git_hash,
        )  # fmt: skip
        return header, encode_payloads
    header = collection_header_v2(
        o.device_id, o.client_id, session, o.system_version, o.product_version, o.env,
        system=o.system, product_git_hash=o.product_git_hash, **o.collection_fields,
    )  # fmt: skip
    return header, encode_payloads_v2
