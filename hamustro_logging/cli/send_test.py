"""``hamustro-logging send-test``: one test event straight to the collector, the answer explained.

The whole tracker configuration (``_tracker_config``), a session of its own
(``_test_header``), a probe of the schema the collector speaks, then the
event; ``_explain_test`` says what the answer means. The queue folder is
never touched.

Who calls what: :func:`hamustro_logging.cli.main` calls :func:`run` on the
main thread, and ``build_parser`` calls :func:`add_parser`; the options,
errors and output it shares with the other commands are ``_common``'s.
"""

from __future__ import annotations

import argparse
import time

from ..config import (
    check_schema,
    default_device_id,
    default_system_language,
    default_system_version,
)
from ..mapping import EventError, build_event, build_event_v2
from ..tracker import SCHEMA2_OPTIONS
from ..transport import Answer, Transport
from ..wire import (
    collection_header,
    collection_header_v2,
    encode_payload,
    encode_payloads_v2,
    environment,
    session_id,
    session_id_v2,
    sha256hex,
)
from ._common import (
    AddCommand,
    UsageError,
    _add_config_options,
    _config,
    _error,
    _headers,
    _shown_url,
    _timeout,
)

#: The command this module runs.
NAME = "send-test"


def _tracker_config(args: argparse.Namespace) -> dict[str, str]:
    """The whole tracker configuration (``send-test``): :func:`_config` and the schema's rules."""
    values = _config(args)
    values.setdefault("device_id", default_device_id())
    values.setdefault("system_version", default_system_version())
    try:
        schema = check_schema(values.get("schema", "1"))
        if schema == 1:
            given = [name for name in SCHEMA2_OPTIONS if name in values]
            if given:
                flag = "--" + given[0].replace("_", "-")
                raise ValueError(
                    f"{flag} exists only in schema 2; this configuration uses schema 1: "
                    "say --schema 2 (or set HAMUSTRO_SCHEMA=2)"
                )
        elif "env" not in values:
            raise ValueError("schema 2 needs --env (or HAMUSTRO_ENV): a name such as beta, or 0-11")
        else:
            environment(values["env"])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return values


def _explain_test(answer: Answer, url: str, read_timeout: float) -> str:
    """What the collector's answer to the test event means, in plain words."""
    status = answer.status
    if status == 200:
        return "ok: the collector accepted the test event"
    if status == 405:
        return (
            "405: the collector refused the signature: the secret is probably wrong "
            "(check shared_secret_key / HAMUSTRO_SHARED_SECRET_KEY)"
        )
    if status == 400:
        return "400: the collector refused the collection as malformed"
    if status in (429, 503):
        wait = "" if answer.retry_after is None else f" (it asks to wait {answer.retry_after:g} s)"
        return f"{status}: the collector is busy or shutting down; try again later{wait}"
    if status is not None:
        return (
            f"HTTP {status}: not an answer a Hamustro collector gives; "
            f"is {url} the collector's track URL?"
        )
    if answer.sent and (answer.error or "").startswith("no answer within"):
        return f"no answer within {read_timeout:g} s from {url}"
    return f"{answer.error}; is the collector running at {url}?"


def _test_header(config: dict[str, str], schema: int, env: int) -> tuple[str, bytes]:
    """The session and collection header of ``send-test`` in ``schema``.

    A session of its own (product_version + "+send-test"), so the test
    event's nr 1 never shares a (session, nr) with the application's real events.
    """
    device = sha256hex(config["device_id"])
    client, system_version = config["client_id"], config["system_version"]
    product_version = config["product_version"] + "+send-test"
    if schema == 1:
        session = session_id(device, client, system_version, product_version)
        return session, collection_header(device, client, session, system_version, product_version)
    session = session_id_v2(device, client, system_version, product_version, env)
    fields = {name: config.get(name) for name in SCHEMA2_OPTIONS[1:]}
    if fields["system_language"] is None:
        fields["system_language"] = default_system_language()
    header = collection_header_v2(
        device, client, session, system_version, product_version, env, **fields
    )
    return session, header


def run(args: argparse.Namespace) -> int:
    """Probe the schema, send the test event, explain the answer; exit 0 only on 200."""
    config = _tracker_config(args)
    timeout = _timeout(config)
    schema = check_schema(config.get("schema", "1"))
    # The probe of the other schema needs some env: any does, nothing is stored.
    env = environment(config["env"]) if schema == 2 else 0
    session, header = _test_header(config, schema, env)
    now = time.time()
    try:
        if schema == 1:
            frame = encode_payload(build_event(args.event, is_testing=True, at=now), 1)
        else:
            frame = encode_payloads_v2([build_event_v2(args.event, at=now)], 1)[0]
    except EventError as exc:
        raise UsageError(f"--event: {exc}") from None
    transport = Transport(
        config["collector_url"], config["shared_secret_key"], timeout=timeout,
        headers=_headers(config),
    )  # fmt: skip
    url = _shown_url(transport.url)
    try:
        # A valid collection without payloads gets 204 only in the schema the
        # collector speaks (400 in the other): ask in ours, then in the other.
        answer = transport.post(header)
        if answer.status == 400:
            other = 2 if schema == 1 else 1
            if transport.post(_test_header(config, other, env)[1]).status == 204:
                _error(
                    f"the collector at {url} speaks schema {other}, this configuration schema "
                    f"{schema}: set schema={other} (--schema {other} or HAMUSTRO_SCHEMA={other})"
                    + (" and its env (--env or HAMUSTRO_ENV)" if other == 2 else "")
                )
                return 1
        if answer.status in (200, 204):  # else its answer is the event's (405: the secret...)
            answer = transport.post(header + frame)
    finally:
        transport.close()
    message = _explain_test(answer, url, timeout[1])
    if not answer.ok:
        _error(message)
        return 1
    marked = "is_testing" if schema == 1 else "schema 2, which has no is_testing"
    print(f"{message} (event {args.event!r}, session {session}, nr 1, {marked}) at {url}")
    return 0


def add_parser(add: AddCommand) -> None:
    """Add ``send-test`` and its options to the parser (``build_parser`` calls it)."""
    send_test = add(
        "send-test",
        "send one test event straight to the collector and explain the answer",
        "Send one test event directly to the collector (not through the queue, which is "
        "left untouched) and say what the answer means. Schema 1 marks it is_testing; "
        "schema 2 has no such field, so it is stored like any event, in a session of its "
        "own (product_version + '+send-test'). First asks the collector, with an empty "
        "collection, whether it speaks the configured schema, and says which setting to "
        "change if not. Exits 0 only if the collector answered 200.",
    )
    _add_config_options(send_test)
    send_test.add_argument(
        "--event",
        default="hamustro_logging.send_test",
        help="the event name (default: hamustro_logging.send_test)",
    )
