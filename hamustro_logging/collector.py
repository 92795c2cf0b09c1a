"""A local Hamustro collector for development and tests; not for production.

It answers ``POST /api/v1/track`` exactly as the real collector does, check
by check and in the same order (``docs/protocol.md`` lists them), and prints
every accepted event as one compact JSON line (stdout by default). It speaks one
schema: schema 1 (the default) or, with ``schema=2`` / ``--schema 2``, schema 2
as upstream's newest collector does (protobuf or JSON bodies; events recorded
as that collector stores them: ``env`` by name, the parameters as one JSON
object string). It stores
nothing durably, keeps accepted events in memory for tests and can inject
faults (errors, dropped connections, hangs, slowness) so the client's retry
logic can be exercised over real HTTP on loopback.

From a shell::

    python -m hamustro_logging.collector --port 8080 --secret dev-secret
    python -m hamustro_logging.collector --schema 2

From a test::

    with DevCollector(secret="s") as collector:
        ...  # point a client at collector.url
        events = collector.wait_for(3)

Which thread calls what: the ``DevCollector`` methods are called from the
test's (or the CLI's) threads; every connection is served by its own daemon
thread. All shared state sits behind one lock, ``_lock``; its conditions wake
``wait_for`` (``_changed``) and ``stop`` (``_idle``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hmac
import ipaddress
import json
import os
import re
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, NamedTuple, TextIO

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from . import payload_pb2, payload_v2_pb2, wire

__all__ = ["TRACK_PATH", "DevCollector", "main"]

TRACK_PATH = "/api/v1/track"

_encode_json = json.JSONEncoder(separators=(",", ":")).encode
_ENV_NAMES = {number: name for name, number in wire.ENVIRONMENTS.items()}
#: What Go's encoding/json escapes beyond what Python's does (ensure_ascii=False).
_GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)
_encode_go_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class _Fault(NamedTuple):
    # "fail", "drop", "hang", "accept_then_drop", "redirect", "trickle" or "big_body"
    kind: str
    status: int = 0
    retry_after: str | None = None
    seconds: float = 0.0  # hang: the wait; trickle: the wait per body byte
    location: str = ""  # redirect: the Location header
    size: int = 0  # trickle, big_body: the answer's body length


class _Answer(NamedTuple):
    status: int
    error: str = ""
    events: list[dict[str, Any]] | None = None  # None unless keep_events
    text: str = ""  # the JSON lines to print, each ending with a newline
    n_events: int = 0
    # Schema 2, JSON body: a parameter without name or value panics the real
    # collector's handler after it queued the payloads before it: store the
    # events (if any) and close the connection without an answer.
    crash: bool = False


class _BadRequest(Exception):
    """The request's framing is broken: answer 400 and close the connection."""


class _ClientGone(Exception):
    """The client closed the connection mid-request: nothing to answer."""


def _text(value: str | bytes) -> str:
    # upb hands back bytes for a proto2 string field holding invalid UTF-8;
    # the Go collector stores such strings as they are, we store them readable.
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _raw(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def _missing_fields(message: Message) -> list[str]:
    # FindInitializationErrors exists at run time but not in the stubs.
    find: Callable[[], list[str]] = getattr(message, "FindInitializationErrors", list)
    return find()


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
    pairs = {_text(p.name): _text(p.value) for p in parameters}
    return _encode_go_json(dict(sorted(pairs.items()))).translate(_GO_ESCAPES)


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


class _Stamps:
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


class DevCollector:
    """A Hamustro collector on loopback, for development and tests.

    ``schema`` is the one schema it speaks (1 or 2): a request in the other
    one is refused with 400, as the real collector of that schema does.

    >>> import io, requests
    >>> with DevCollector(output=io.StringIO()) as collector:
    ...     requests.get(collector.url + TRACK_PATH, timeout=5).status_code
    405
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        secret: str = "dev-secret",  # noqa: S107 -- a well-known development default
        output: TextIO | None = None,
        verbose: bool = False,
        keep_events: bool = True,
        *,
        schema: int = 1,
    ) -> None:
        if schema not in (1, 2) or isinstance(schema, bool):
            raise ValueError(f"schema must be 1 or 2, got {schema!r}")
        self._schema = schema
        self._host = host
        self._port = port
        self._secret = secret
        self._output = output if output is not None else sys.stdout
        self._verbose = verbose
        self._keep_events = keep_events
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # an event was accepted, or stop
        self._idle = threading.Condition(self._lock)  # a request finished
        self._events: list[dict[str, Any]] = []
        self._accepted = 0
        self._statuses: collections.Counter[int] = collections.Counter()
        self._faults: collections.deque[_Fault] = collections.deque()
        self._delay = 0.0
        self._max_body: int | None = None
        self._read_rate: float | None = None
        self._stopping = threading.Event()
        self._stopped = False
        self._connections: dict[_Handler, bool] = {}  # handler -> busy with a request
        self._busy = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None

    # -- life cycle ----------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, ``http://HOST:PORT``, without ``/api/v1/track``."""
        if self._url is None:
            raise RuntimeError("DevCollector.url is known once start() has bound the port")
        return self._url

    def start(self) -> DevCollector:
        """Bind and serve in a daemon thread; returns self. OSError if the port is taken."""
        with self._lock:
            if self._stopped:
                raise RuntimeError("a stopped DevCollector cannot be started again")
            if self._server is not None:
                return self
            server_class = _Server6 if ":" in self._host else _Server
            server = server_class((self._host, self._port), _Handler)
            server.collector = self
            host, port = server.server_name, server.server_port
            shown = f"[{host}]" if ":" in host else host
            self._url = f"http://{shown}:{port}"
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"hamustro-dev-collector-{port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; idempotent.

        Requests in progress (hanging, delayed) wake up and answer 503; idle
        keep-alive connections are closed, so a client sees a dead collector.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._stopping.set()
            self._changed.notify_all()
            server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        with self._lock:
            idle = [h.connection for h, busy in self._connections.items() if not busy]
        for sock in idle:
            with contextlib.suppress(OSError):  # already closed by the client
                sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self._idle.wait_for(lambda: self._busy == 0, timeout=5.0)
        server.server_close()
        if thread is not None:
            thread.join(timeout=5.0)

    def __enter__(self) -> DevCollector:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what happened -------------------------------------------------------

    def events(self) -> list[dict[str, Any]]:
        """Snapshot of the accepted events (empty when ``keep_events`` is False)."""
        with self._lock:
            return list(self._events)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Block until at least ``count`` events were accepted; return a snapshot.

        Raises AssertionError after ``timeout`` seconds, or at once if the
        collector is stopped with fewer events.
        """
        with self._lock:
            done = self._changed.wait_for(
                lambda: self._accepted >= count or self._stopped, timeout=timeout
            )
            if not done or self._accepted < count:
                why = "the collector was stopped" if self._stopped else f"after {timeout:g}s"
                raise AssertionError(
                    f"DevCollector: expected at least {count} accepted events, "
                    f"got {self._accepted} ({why}); answers so far: {dict(self._statuses)}"
                )
            return list(self._events)

    def faults_left(self) -> int:
        """How many injected faults no request has met yet (a request meets one once read)."""
        with self._lock:
            return len(self._faults)

    def answered(self) -> dict[int, int]:
        """Snapshot of the answers given, status code -> count (dropped ones not included)."""
        with self._lock:
            return dict(self._statuses)

    # -- fault injection -----------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 500, retry_after: str | None = None) -> None:
        """Answer the next ``n`` track POSTs with ``status`` and store nothing."""
        if not 100 <= status <= 599:
            raise ValueError(f"status must be an HTTP status code, got {status}")
        self._add_faults(n, _Fault("fail", status=status, retry_after=retry_after))

    def drop_next(self, n: int = 1) -> None:
        """Read the next ``n`` track POSTs, then close the connection unanswered."""
        self._add_faults(n, _Fault("drop"))

    def hang_next(self, n: int = 1, seconds: float = 30.0) -> None:
        """Read the next ``n`` track POSTs, wait ``seconds`` (cut short by stop()), answer."""
        self._add_faults(n, _Fault("hang", seconds=seconds))

    def accept_then_drop_next(self, n: int = 1) -> None:
        """Store the next ``n`` valid track POSTs as for 200, but close without answering.

        A request that fails a check is answered as usual (there is nothing to store).
        """
        self._add_faults(n, _Fault("accept_then_drop"))

    def redirect_next(self, n: int = 1, status: int = 301, location: str = "") -> None:
        """Answer the next ``n`` track POSTs with a redirect to ``location``; store nothing.

        ``location`` defaults to this collector's own track URL.
        """
        if not 300 <= status <= 399:
            raise ValueError(f"status must be a 3xx redirect, got {status}")
        self._add_faults(n, _Fault("redirect", status=status, location=location))

    def trickle_next(self, n: int = 1, body_bytes: int = 60, seconds_per_byte: float = 1.0) -> None:
        """Store the next ``n`` valid track POSTs and answer 200, with a body of
        ``body_bytes`` (its Content-Length) sent one byte every ``seconds_per_byte``.

        The trickle stops when the client goes away or stop() is called.
        """
        if body_bytes < 1 or seconds_per_byte < 0:
            raise ValueError("body_bytes must be >= 1 and seconds_per_byte >= 0")
        self._add_faults(n, _Fault("trickle", seconds=seconds_per_byte, size=body_bytes))

    def big_body_next(self, n: int = 1, size: int = 300 << 20) -> None:
        """Store the next ``n`` valid track POSTs and answer 200 with a ``size``-byte body.

        The body is written lazily, 64 KiB at a time, for as long as the
        client reads it; nothing of its size is held in memory.
        """
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self._add_faults(n, _Fault("big_body", size=size))

    @property
    def max_body(self) -> int | None:
        """Answer 413 to any POST whose body is over this many bytes (None: no limit).

        Like a proxy in front of the collector: checked before everything
        else, once the body is read, and the connection is then closed.
        """
        with self._lock:
            return self._max_body

    @max_body.setter
    def max_body(self, limit: int | None) -> None:
        if limit is not None and limit < 0:
            raise ValueError(f"max_body must be >= 0 or None, got {limit}")
        with self._lock:
            self._max_body = limit

    def read_rate(self, bytes_per_second: float | None) -> None:
        """Read request bodies at about ``bytes_per_second`` (a slow uplink); None turns it off.

        Connections accepted while a rate is set also get a small receive
        buffer (16 KiB), so the client feels the slowness at once instead of
        filling megabytes of loopback buffers first.
        """
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError(f"bytes_per_second must be > 0 or None, got {bytes_per_second}")
        with self._lock:
            self._read_rate = bytes_per_second

    def set_delay(self, seconds: float) -> None:
        """Make every answer wait ``seconds`` first (a slow collector); 0 turns it off."""
        with self._lock:
            self._delay = max(0.0, seconds)

    def _add_faults(self, n: int, fault: _Fault) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        with self._lock:
            self._faults.extend([fault] * n)

    # -- called from the connection threads ----------------------------------

    def _next_fault(self) -> _Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _track(self, handler: _Handler, open_: bool) -> None:
        with self._lock:
            if open_:
                self._connections[handler] = False
            else:
                self._connections.pop(handler, None)

    def _set_busy(self, handler: _Handler, busy: bool) -> None:
        with self._lock:
            self._connections[handler] = busy
            self._busy += 1 if busy else -1
            if not busy:
                self._idle.notify_all()

    def _count(self, status: int) -> None:
        with self._lock:
            self._statuses[status] += 1

    def _check(self, headers: Any, body: bytes) -> _Answer:
        """The collector's checks, in the collector's order (docs/protocol.md)."""
        time_header = headers.get("X-Hamustro-Time")
        if not time_header:
            return _Answer(405, "X-Hamustro-Time header is missing")
        sent_signature = headers.get("X-Hamustro-Signature")
        if not sent_signature:
            return _Answer(405, "X-Hamustro-Signature header is missing")
        expected = wire.signature(time_header, body, self._secret)
        if not hmac.compare_digest(
            sent_signature.encode("latin-1", "replace"), expected.encode("ascii")
        ):
            return _Answer(405, "X-Hamustro-Signature header is invalid")
        media_type = headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if self._schema == 2:
            return self._check_v2(headers, body, media_type)
        if media_type != "application/protobuf":
            return _Answer(400, "Unsupported or missing Content-Type")
        collection = payload_pb2.Collection()
        try:
            collection.ParseFromString(body)
        except DecodeError as exc:
            return _Answer(400, f"Unmarshaling protobuf is failed: {exc}")
        if not collection.IsInitialized():
            missing = ", ".join(_missing_fields(collection))
            return _Answer(
                400, f"Unmarshaling protobuf is failed: required field not set: {missing}"
            )
        device_id, client_id = collection.device_id, collection.client_id
        system_version, product_version = collection.system_version, collection.product_version
        session = collection.session
        fields = (device_id, client_id, system_version, product_version, session)
        if all(isinstance(f, str) for f in fields):
            expected_session = wire.session_id(
                device_id, client_id, system_version, product_version
            )
            session_ok = session == expected_session
        else:  # invalid UTF-8 somewhere: hash the bytes as sent, as Go does
            joined = b":".join(_raw(f) for f in fields[:4])
            session_ok = _raw(session) == wire.md5hex(joined).encode()
        if not session_ok:
            return _Answer(400, "Collection's session attribute is invalid")
        payloads = collection.payloads
        if not payloads:
            return _Answer(204)
        has = collection.HasField
        base: dict[str, Any] = {
            "session": _text(session),
            "device_id": _text(device_id),
            "client_id": _text(client_id),
            "system_version": _text(system_version),
            "product_version": _text(product_version),
            "system": _text(collection.system) if has("system") else None,
            "product_git_hash": _text(collection.product_git_hash)
            if has("product_git_hash")
            else None,
        }
        # The collection's fields are encoded once per request: each line is
        # that prefix plus the payload's own fields.
        prefix = _encode_json(base)[:-1] + ","
        keep = self._keep_events
        stamps = _Stamps(headers)
        events = []
        lines = []
        for payload in payloads:
            at, ip = payload.at, stamps.ip(payload.ip)
            has = payload.HasField
            part = {
                "at": at,
                "at_utc": stamps.utc(at),
                "event": _text(payload.event),
                "nr": payload.nr,
                "user_id": payload.user_id if has("user_id") else None,
                "ip": _text(ip),
                "parameters": _text(payload.parameters) if has("parameters") else None,
                "is_testing": payload.is_testing,
            }
            lines.append(prefix + _encode_json(part)[1:])
            if keep:
                events.append(base | part)
        lines.append("")  # the last line's newline
        return _Answer(200, events=events, text="\n".join(lines), n_events=len(payloads))

    def _check_v2(self, headers: Any, body: bytes, media_type: str) -> _Answer:
        """Schema 2's checks after the signature, in the collector's order (docs/protocol.md)."""
        collection = payload_v2_pb2.Collection()
        is_json = media_type == "application/json"
        if is_json:
            error = _parse_json(body, collection)
            if error is not None:
                return _Answer(400, f"Unmarshaling json collection is failed: {error}")
            # Its own check of a JSON collection looks at the collection's and
            # the payloads' required fields, never at a Parameter's.
            missing = [m for m in _missing_fields(collection) if "parameters[" not in m]
            if missing:
                return _Answer(
                    400,
                    "Unmarshaled json collection is failed: required field not set: "
                    + ", ".join(missing),
                )
        elif media_type == "application/protobuf":
            try:
                collection.ParseFromString(body)
            except (DecodeError, UnicodeDecodeError) as exc:
                # UnicodeDecodeError: only the pure-Python runtime (protobuf < 4.21)
                # checks a proto2 string's UTF-8; upb, like Go, keeps the bytes.
                return _Answer(400, f"Unmarshaling protobuf is failed: {exc}")
            if not collection.IsInitialized():
                unset = ", ".join(_missing_fields(collection))
                return _Answer(
                    400, f"Unmarshaling protobuf is failed: required field not set: {unset}"
                )
        else:
            return _Answer(400, "Unsupported or missing Content-Type")
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
            joined = b":".join([*(_raw(f) for f in fields[:4]), str(env).encode()])
            session_ok = _raw(session) == wire.md5hex(joined).encode()
        if not session_ok:
            return _Answer(400, "Collection's session attribute is invalid")
        payloads = collection.payloads
        if not payloads:
            return _Answer(204)
        has = collection.HasField
        base: dict[str, Any] = {
            "session": _text(session),
            "device_id": _text(device_id),
            "client_id": _text(client_id),
            "system_version": _text(system_version),
            "product_version": _text(product_version),
            "env": _ENV_NAMES[env],
        }
        for name in _OPTIONAL_V2:
            base[name] = _text(getattr(collection, name)) if has(name) else None
        prefix = _encode_json(base)[:-1] + ","
        keep = self._keep_events
        stamps = _Stamps(headers)
        events = []
        lines = []
        crash = False
        for payload in payloads:
            parameters = payload.parameters
            if is_json and any(
                not (p.HasField("name") and p.HasField("value")) for p in parameters
            ):
                crash = True  # a protobuf body never gets here: refused as not initialized
                break
            at, ip = payload.at, stamps.ip(payload.ip)
            has = payload.HasField
            part = {
                "at": at,
                "at_utc": stamps.utc(at),
                "event": _text(payload.event),
                "nr": payload.nr,
                "timezone": _text(payload.timezone) if has("timezone") else None,
                "tenant_id": _text(payload.tenant_id) if has("tenant_id") else None,
                "user_id": _text(payload.user_id) if has("user_id") else None,
                "ip": _text(ip),
                "country": _text(payload.country) if has("country") else None,
                "parameters": _parameters_json(parameters),
            }
            lines.append(prefix + _encode_json(part)[1:])
            if keep:
                events.append(base | part)
        n_events = len(lines)
        if lines:
            lines.append("")  # the last line's newline
        text = "\n".join(lines)
        return _Answer(200, events=events, text=text, n_events=n_events, crash=crash)

    def _store(self, answer: _Answer, answered: bool) -> int:
        """Print and keep accepted events; the status to answer (200, 500 or 503)."""
        with self._lock:
            # Checked under the lock stop() takes: once stop() returns, nothing more is stored.
            if self._stopping.is_set():
                return HTTPStatus.SERVICE_UNAVAILABLE
            try:
                self._output.write(answer.text)
                self._output.flush()
            except (OSError, ValueError):
                return HTTPStatus.INTERNAL_SERVER_ERROR
            if answer.events:
                self._events.extend(answer.events)
            self._accepted += answer.n_events
            if answered:
                self._statuses[200] += 1
            self._changed.notify_all()
        return HTTPStatus.OK


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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    collector: DevCollector

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call socket.getfqdn(), a DNS lookup
        # that can take seconds; the name is never used here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-request is routine here (timeouts, drops).
        if self.collector._verbose:
            super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        if self.server.collector._read_rate is not None:
            # Before the first read; Linux keeps the window scale agreed at
            # the handshake, but never opens the window beyond this buffer.
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        super().setup()
        self.server.collector._track(self, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.collector._track(self, False)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.collector._verbose:
            super().log_message(format, *args)

    def do_POST(self) -> None:
        self._serve(is_post=True)

    def do_GET(self) -> None:
        self._serve(is_post=False)

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def _serve(self, is_post: bool) -> None:
        collector = self.server.collector
        collector._set_busy(self, True)
        try:
            self._serve_busy(collector, is_post)
        finally:
            collector._set_busy(self, False)

    def _serve_busy(self, collector: DevCollector, is_post: bool) -> None:
        # The whole body is read before any answer, so keep-alive stays in step.
        try:
            body = self._read_body()
        except _BadRequest as exc:
            self.close_connection = True
            self._answer(400, str(exc))
            return
        except (_ClientGone, OSError):
            self.close_connection = True
            return
        limit = collector._max_body
        if is_post and limit is not None and len(body) > limit:
            # A proxy in front of the collector: before any of its checks.
            self.close_connection = True
            self._answer(413, "Request Entity Too Large")
            return
        is_track = self.path.split("?", 1)[0] == TRACK_PATH
        fault = collector._next_fault() if is_post and is_track else None
        if fault is not None and fault.kind == "drop":
            self.close_connection = True
            return
        hang = fault.seconds if fault is not None and fault.kind == "hang" else 0.0
        wait = collector._delay + hang
        if wait > 0:
            collector._stopping.wait(wait)
        if not is_track:
            self._answer(404, "404 page not found")
        elif collector._stopping.is_set():
            self.close_connection = True
            self._answer(503, "Server is currently shutting down")
        elif not is_post:
            self._answer(405, "Sending method is not POST")
        elif fault is not None and fault.kind == "fail":
            self._answer(fault.status, "injected failure", retry_after=fault.retry_after)
        elif fault is not None and fault.kind == "redirect":
            location = fault.location or collector.url + TRACK_PATH
            self._answer(fault.status, "injected redirect", location=location)
        else:
            answer = collector._check(self.headers, body)
            if answer.status != 200:
                self._answer(answer.status, answer.error)
                return
            drop = answer.crash or (fault is not None and fault.kind == "accept_then_drop")
            if answer.crash and collector._verbose:
                self.log_message("%s", "handler crashed: a JSON parameter without name or value")
            status = collector._store(answer, answered=not drop)
            if status == 200 and drop:
                self.close_connection = True
            elif status == 200 and fault is not None and fault.kind in ("trickle", "big_body"):
                self._answer_with_body(fault.size, fault.seconds if fault.kind == "trickle" else 0)
            elif status == 200:
                self._answer(200, counted=True)
            else:
                self.close_connection = status == 503
                self._answer(status, "cannot accept events now")

    def _read_body(self) -> bytes:
        encoding = self.headers.get("Transfer-Encoding", "")
        if "chunked" in encoding.lower():
            return self._read_chunked()
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return b""
        try:
            length = int(length_header)
        except ValueError:
            raise _BadRequest(f"invalid Content-Length {length_header!r}") from None
        if length < 0:
            raise _BadRequest(f"invalid Content-Length {length_header!r}")
        return self._read_exactly(length)

    def _read_exactly(self, length: int) -> bytes:
        """``length`` bytes of the body, at the collector's ``read_rate`` if one is set."""
        collector = self.server.collector
        rate = collector._read_rate
        if rate is None:
            body = self.rfile.read(length)
        else:
            parts: list[bytes] = []
            got, started = 0, time.monotonic()
            piece = max(1, int(rate / 20))  # about 20 reads a second
            while got < length and not collector._stopping.is_set():
                part = self.rfile.read(min(piece, length - got))
                if not part:
                    break
                parts.append(part)
                got += len(part)
                collector._stopping.wait(max(0.0, started + got / rate - time.monotonic()))
            if got < length:
                # The client went away, or stop(): a client that closed with
                # its buffers full may take long to send the rest; hang up.
                raise _ClientGone
            body = b"".join(parts)
        if len(body) < length:
            raise _ClientGone
        return body

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            line = self.rfile.readline(65537)
            if not line:
                raise _ClientGone
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequest("invalid chunk size") from None
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers are ignored
                return b"".join(parts)
            parts.append(self._read_exactly(size))
            self.rfile.readline(65537)  # the CRLF after the chunk

    def _answer(
        self,
        status: int,
        error: str = "",
        retry_after: str | None = None,
        counted: bool = False,
        location: str | None = None,
    ) -> None:
        collector = self.server.collector
        body = b""
        head = [f"HTTP/1.1 {status} {_phrase(status)}"]
        if location is not None:
            head.append(f"Location: {location}")
        if collector._verbose and error and status >= 400:
            body = _encode_json({"error": error}).encode()
            head.append("Content-Type: application/json")
        if retry_after is not None:
            head.append(f"Retry-After: {retry_after}")
        if self.close_connection:
            head.append("Connection: close")
        if status >= 200 and status not in (204, 304):
            head.append(f"Content-Length: {len(body)}")
        if not counted:
            collector._count(status)
        if collector._verbose:
            self.log_request(status, len(body))
        try:
            self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        except OSError:
            self.close_connection = True  # the client gave up waiting

    def _answer_with_body(self, size: int, seconds_per_byte: float) -> None:
        """Answer 200 with a ``size``-byte body, written lazily (trickled if ``seconds_per_byte``).

        Stops when the client goes away or the collector stops; a body cut
        short closes the connection.
        """
        collector = self.server.collector
        collector._count(200)
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode("latin-1")
        block = b"x" * (1 if seconds_per_byte > 0 else 65536)
        left = size
        try:
            self.wfile.write(head)
            while left > 0 and not collector._stopping.is_set():
                self.wfile.write(block[:left])
                left -= min(len(block), left)
                if seconds_per_byte > 0:
                    collector._stopping.wait(seconds_per_byte)
        except OSError:
            pass  # the client stopped reading: what this fault is for
        if left > 0:
            self.close_connection = True


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def main(argv: list[str] | None = None) -> int:
    """Run the development collector until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m hamustro_logging.collector",
        description="Local Hamustro collector for development and tests (not for production). "
        "Prints every accepted event as one JSON line.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8080, help="port to bind; 0 picks a free one (default 8080)"
    )
    parser.add_argument(
        "--secret",
        default=os.environ.get("HAMUSTRO_SHARED_SECRET_KEY") or "dev-secret",
        help="shared secret key (default: $HAMUSTRO_SHARED_SECRET_KEY, else dev-secret)",
    )
    parser.add_argument(
        "--schema",
        type=int,
        choices=(1, 2),
        default=1,
        help="the schema to speak: 1, or 2 as upstream's newest collector (default 1)",
    )
    parser.add_argument("--output", metavar="FILE", help="append events to FILE (default stdout)")
    parser.add_argument(
        "--verbose", action="store_true", help='log requests; {"error": ...} bodies on errors'
    )
    args = parser.parse_args(argv)

    output: TextIO = sys.stdout
    if args.output is not None:
        output = open(args.output, "a", encoding="utf-8")  # noqa: SIM115 -- closed in finally
    stop_requested = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop_requested
        stop_requested = True  # only a flag: no lock may be taken inside a signal handler

    collector = DevCollector(
        args.host, args.port, args.secret, output, args.verbose, False, schema=args.schema
    )
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            collector.start()
        except OSError as exc:
            print(
                f"hamustro dev collector: cannot listen on {args.host}:{args.port}: {exc}",
                file=sys.stderr,
            )
            return 1
        print(
            f"hamustro dev collector listening on {collector.url}{TRACK_PATH}",
            file=sys.stderr,
            flush=True,
        )
        while not stop_requested:
            time.sleep(0.1)
        return 0
    finally:
        collector.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if output is not sys.stdout:
            output.close()


if __name__ == "__main__":
    raise SystemExit(main())
