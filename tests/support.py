"""Helpers shared by the tests (not fixtures: plain functions)."""

from __future__ import annotations

import http.client
import io
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hamustro_logging.collector import DevCollector
from hamustro_logging.ledger import Ledger
from hamustro_logging.queue import Queue
from hamustro_logging.reader import QueueReader
from hamustro_logging.wire import session_id, sha256hex

TEST_SECRET = "test-secret"  # noqa: S105 -- a test fixture, not a credential

#: The identity every test uses, and its session (collector.md's vector).
IDENTITY: dict[str, str] = {
    "device_id": "device-1",
    "client_id": "client-1",
    "system_version": "OS X 10.11",
    "product_version": "1.0.0",
}
SESSION = session_id(sha256hex("device-1"), "client-1", "OS X 10.11", "1.0.0")
#: Quick retries, so a test that goes through failures stays short.
FAST: dict[str, float] = {"backoff_base": 0.05, "backoff_cap": 0.5}


def tracker_config(
    collector: DevCollector | str, queue_dir: Path, **overrides: Any
) -> dict[str, Any]:
    """Keyword arguments for ClientTracker / HamustroHandler against ``collector``."""
    url = collector if isinstance(collector, str) else collector.url
    config: dict[str, Any] = {
        "collector_url": url,
        "shared_secret_key": TEST_SECRET,
        "device_id": "device-1",
        "client_id": "client-1",
        "system_version": "OS X 10.11",
        "product_version": "1.0.0",
        "queue_dir": str(queue_dir),
        "backoff_base": 0.05,
        "backoff_cap": 0.5,
    }
    config.update(overrides)
    return config


def dead_url() -> str:
    """The URL of a loopback port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def pending_in(queue_dir: Path) -> int:
    """Unsent events in a folder, read through a Queue of its own."""
    queue = Queue(queue_dir)
    try:
        return queue.pending_count()
    finally:
        queue.close()


def journal_events(queue_dir: Path) -> int:
    """Events written to the folder's journal segments (moved in or not), read without moving."""
    from hamustro_logging.journal import START, open_segment, segment_names

    count = 0
    for name in segment_names(queue_dir):
        segment = open_segment(queue_dir, name)
        if segment is None:
            continue
        try:
            count += sum(1 for _, kind, _ in segment.records(START, 1 << 30) if kind == "E")
        finally:
            segment.close()
    return count


def numbers(events: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """The (session, nr) of each received event, sorted."""
    return sorted((e["session"], e["nr"]) for e in events)


def collector_at(url: str, secret: str = TEST_SECRET) -> DevCollector:
    """A DevCollector (not started) on the port of ``url``: a collector that was down comes back.

    Events are kept for the collector and key they were logged for, so a
    test that logs while the collector is down restarts one at the same URL.
    """
    return DevCollector(port=int(url.rsplit(":", 1)[1]), secret=secret, output=io.StringIO())


def assert_ledger_adds_up(folder: Path, accepted: int) -> Ledger:
    """Every event handed to the library in ``folder`` is in exactly one counted state.

    ``accepted + retried == pending + sent + rejected + set_aside + dropped``,
    read from the folder alone (the read-only reader, as ``status`` reads it).
    Returns the ledger for further checks.
    """
    with QueueReader(folder) as reader:
        ledger, pending = reader.ledger(), reader.pending_count()
    assert ledger.unaccounted(pending, accepted) == 0, (
        f"accepted {accepted} + retried {ledger.retried} != pending {pending} + "
        f"sent {ledger.sent} + rejected {dict(ledger.rejected)} + set_aside {ledger.set_aside}"
        f" + dropped {dict(ledger.dropped)} (stored {ledger.stored})"
    )
    return ledger


class Gateway:
    """A reverse proxy on loopback in front of a collector: nginx, a load balancer, a CDN.

    Forwards every request to ``upstream`` (a collector's base URL) with its
    headers and body, and relays the answer, except that the first
    ``fail_after_forwarding`` requests get ``status`` (502, 504...) from the
    gateway itself *after* the collector answered: the collector stored them,
    the client is told it failed, as when a gateway times out upstream.
    ``requests`` holds every request's headers and body, as the gateway got them.
    Threads: one per connection (``ThreadingHTTPServer``); the lists behind a lock.
    """

    def __init__(self, upstream: str, fail_after_forwarding: int = 0, status: int = 502) -> None:
        self.upstream = urlsplit(upstream)
        self.status = status
        self._lock = threading.Lock()
        self._to_fail = fail_after_forwarding
        self.requests: list[tuple[dict[str, str], bytes]] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                with gateway._lock:
                    gateway.requests.append((headers, body))
                status, answer = gateway._forward(self.path, headers, body)
                with gateway._lock:
                    failing = gateway._to_fail > 0
                    gateway._to_fail -= failing
                if failing:
                    status, answer = gateway.status, b"<html>bad gateway</html>"
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _forward(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        host, port = self.upstream.hostname or "127.0.0.1", self.upstream.port or 80
        connection = http.client.HTTPConnection(host, port, timeout=30)
        try:
            connection.request("POST", path, body, headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Gateway:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


#: Hop-by-hop headers a proxy does not pass on (and Host, which names the proxy).
_HOP = frozenset({"connection", "keep-alive", "host", "transfer-encoding", "content-length"})
