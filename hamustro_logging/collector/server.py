"""The development collector's HTTP server: connections, faults, and what it recorded.

:class:`DevCollector` is the object a test or the command holds: it binds,
serves in a daemon thread, injects faults and keeps what was accepted.
``_Handler`` serves one connection: it reads a request's whole body, meets
the next injected fault, then hands the request to the schema's checks
(:func:`.schema1.check` or :func:`.schema2.check`, which decide the
answer) and, for an accepted one, to ``DevCollector._store`` (print and
keep), and writes the answer.

Which thread calls what: the ``DevCollector`` methods are called from the
test's (or the command's) threads; every connection is served by its own
daemon thread of the server. All shared state sits behind one lock,
``DevCollector._lock``; its conditions wake ``wait_for`` (``_changed``) and
``stop`` (``_idle``).
"""

from __future__ import annotations

import collections
import contextlib
import socket
import socketserver
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, NamedTuple, TextIO

from . import schema1, schema2
from .checks import Answer, encode_json

TRACK_PATH = "/api/v1/track"


class _Fault(NamedTuple):
    # "fail", "drop", "hang", "accept_then_drop", "redirect", "trickle" or "big_body"
    kind: str
    status: int = 0
    retry_after: str | None = None
    seconds: float = 0.0  # hang: the wait; trickle: the wait per body byte
    location: str = ""  # redirect: the Location header
    size: int = 0  # trickle, big_body: the answer's body length


class _BadRequest(Exception):
    """The request's framing is broken: answer 400 and close the connection."""


class _ClientGone(Exception):
    """The client closed the connection mid-request: nothing to answer."""


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

    def _check(self, headers: Any, body: bytes) -> Answer:
        """The checks of the schema this collector speaks, in the collector's order."""
        check = schema1.check if self._schema == 1 else schema2.check
        return check(headers, body, self._secret, self._keep_events)

    def _store(self, answer: Answer, answered: bool) -> int:
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
            body = encode_json({"error": error}).encode()
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
