"""Sign and POST one collection; say what came back. No storage, no retry logic.

Called by whoever sends (the handler's flusher thread or
``ClientTracker.flush``); one ``requests.Session`` per ``Transport`` reuses
connections. A ``Transport`` is used by one thread at a time.

What a request may do, and why:

* It has a hard total length, ``Transport.max_duration``: connect, upload
  and the wait for the status line all come out of one budget, so a lease a
  little longer than it is never outlived by its request, whatever the link
  does (a 20 KB/s uplink once uploaded the same batch five times).
* It never follows a redirect: requests would repeat the POST as a GET, and
  a 200 to that GET would delete events the collector never saw. A 3xx is an
  answer like any other, with its ``Location``.
* It never reads a response body: a Hamustro collector's answer is its
  status code. A body trickled at 1 byte/s would hold the send thread, a
  300 MB one the application's memory. An empty body (the collector's 200:
  ``Content-Length: 0``) is finished without touching the socket, so the
  connection is reused; any other is closed unread.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
from requests.structures import CaseInsensitiveDict
from urllib3 import Timeout

from ._version import __version__
from .wire import signature

__all__ = ["Answer", "Transport", "check_headers", "track_url"]

TRACK_PATH = "/api/v1/track"
USER_AGENT = f"hamustro-logging/{__version__}"

#: Errors meaning the collector was never reached (``retry.explain`` then asks
#: whether it runs at that URL; after any other error it was reached).
CONNECTION_REFUSED = "connection refused"
CONNECT_TIMEOUT = "connection timed out"
NO_SUCH_HOST = "cannot resolve the collector's host name"
UNREACHABLE = frozenset({CONNECTION_REFUSED, CONNECT_TIMEOUT, NO_SUCH_HOST})

#: The least time a ``post()`` gets even when its caller's deadline is near or
#: past: one attempt on a healthy loopback or LAN collector fits in it.
MIN_TRY = 0.05


def track_url(collector_url: str) -> str:
    """The collector's base URL with ``/api/v1/track`` appended (once).

    >>> track_url("http://127.0.0.1:8080/"), track_url("http://h/api/v1/track")
    ('http://127.0.0.1:8080/api/v1/track', 'http://h/api/v1/track')
    """
    url = collector_url.rstrip("/")
    return url if url.endswith(TRACK_PATH) else url + TRACK_PATH


#: Headers the library sets itself; ``headers`` may not replace them.
_OWN_HEADERS = frozenset({"content-type", "content-length", "transfer-encoding"})
#: RFC 9110's ``token``: what a header name may be.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def check_headers(headers: object) -> dict[str, str]:
    """The ``headers`` option checked: a dict of extra request headers.

    Refuses (``ValueError``) a header the library sets itself
    (``Content-Type``, ``Content-Length``, ``Transfer-Encoding``, any
    ``X-Hamustro-*``) and names or values HTTP cannot carry. A value is
    treated like the secret: no message ever shows it.

    >>> check_headers({"X-Proxy-Auth": "token-1"})
    {'X-Proxy-Auth': 'token-1'}
    >>> check_headers({"x-hamustro-time": "1"})
    Traceback (most recent call last):
    ...
    ValueError: headers may not set 'x-hamustro-time': the library sets Content-Type and every X-Hamustro-* header itself
    """  # noqa: E501 -- a doctest's expected line
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise TypeError(
            f"headers must be a mapping of names to str values, got {type(headers).__name__}"
        )
    out: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            # Only what comes before the first character a name cannot have: a
            # whole header line given as a name ("Authorization: Bearer ...")
            # holds its value after that.
            start = _TOKEN.match(name) if isinstance(name, str) else None
            shown = (
                f"{(start.group() if start else '')[:64]!r}... (the rest not shown)"
                if isinstance(name, str)
                else type(name).__name__
            )
            raise ValueError(f"headers: {shown} is not a valid HTTP header name")
        lowered = name.lower()
        if lowered in _OWN_HEADERS or lowered.startswith("x-hamustro-"):
            raise ValueError(
                f"headers may not set {name!r}: the library sets Content-Type and every "
                "X-Hamustro-* header itself"
            )
        if not isinstance(value, str):
            raise TypeError(
                f"headers: the value of {name!r} must be str, got {type(value).__name__}"
            )
        try:
            value.encode("latin-1")
            # No whitespace at either end (requests refuses a leading one, a
            # no-break space included, quoting the value in its error).
            valid = value == value.strip() and all(c == "\t" or c >= " " for c in value)
        except UnicodeEncodeError:
            valid = False
        if not valid or "\x7f" in value:
            raise ValueError(
                f"headers: the value of {name!r} cannot be sent in an HTTP header (a control "
                "character, a space at either end or a character outside Latin-1; not shown)"
            )
        out[name] = value
    return out


@dataclass(frozen=True)
class Answer:
    """What one POST got: an HTTP status, or the error that prevented one.

    ``sent`` is False only when the collector certainly did not get the
    whole request (the connection was refused, or the upload was cut before
    the last byte of the body left); after a timeout or a reset once the
    body was out, the collector may have stored the batch, so a resend may
    be a duplicate. ``location`` is a 3xx answer's ``Location``, made
    absolute and without any ``user:password@``.
    """

    status: int | None
    error: str | None = None
    retry_after: float | None = None
    sent: bool = True
    location: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _UploadTooSlow(Exception):
    """Raised by ``_Upload.read`` through requests: the deadline passed mid-upload.

    Deliberately not an ``OSError``: urllib3 then neither retries nor wraps
    it; it closes the half-used connection and lets it through.
    """


class _Upload:
    """The body as a file-like object that stops at a deadline.

    requests sends an object with ``__len__`` and ``__iter__`` as a stream
    with a ``Content-Length`` (``super_len``); urllib3 then calls
    ``read(16384)`` and writes each block with ``sendall``, whose socket
    timeout is the connect timeout. Each block is therefore bounded, but
    nothing bounds their number on a slow uplink: the clock is checked here,
    between blocks. ``complete`` tells whether the last byte was handed over.
    """

    def __init__(self, body: bytes, deadline: float) -> None:
        self._body = body
        self._pos = 0
        self._deadline = deadline

    def __len__(self) -> int:
        return len(self._body)

    def __iter__(self) -> Iterator[bytes]:
        while block := self.read(16384):
            yield block

    @property
    def complete(self) -> bool:
        return self._pos >= len(self._body)

    def read(self, size: int = -1) -> bytes:
        if self.complete:
            return b""
        if time.monotonic() >= self._deadline:
            raise _UploadTooSlow
        end = len(self._body) if size < 0 else min(len(self._body), self._pos + size)
        block = self._body[self._pos : end]
        self._pos = end
        return block


class Transport:
    """POSTs signed collections to ``{collector_url}/api/v1/track``.

    ``timeout`` is the (connect, read) pair: the longest wait for the
    connection, for each block of the upload to be written, and for the
    answer once the body is out. ``request_timeout`` bounds the whole
    request (connect, upload, wait for the status line); ``max_duration``
    is the most a ``post()`` takes, whatever the link does: the request
    timeout plus, at worst, one block's write that began just before it ran
    out (bounded by the connect timeout). Not bounded: a DNS lookup (the
    resolver's own timeouts) and a server that trickles its status line and
    headers a byte at a time.
    ``verify`` is True (check TLS against the system's CAs), a CA bundle
    path, or False (never do that outside development).
    ``headers`` are added to every request (the spec's ``SetHeaders``, for a
    proxy in front of the collector); see :func:`check_headers`. Their values
    are kept like the secret: never in a message or a ``repr``.

    >>> Transport("http://127.0.0.1:8080", "s", timeout=(1, 5), request_timeout=8).max_duration
    9.0
    """

    def __init__(
        self,
        collector_url: str,
        shared_secret_key: str,
        *,
        timeout: tuple[float, float] = (3.05, 10.0),
        request_timeout: float = 30.0,
        verify: bool | str = True,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not (
            isinstance(request_timeout, (int, float))
            and not isinstance(request_timeout, bool)
            and math.isfinite(request_timeout)
            and request_timeout > 0
        ):
            raise ValueError(f"request_timeout must be seconds > 0, got {request_timeout!r}")
        self.url = track_url(collector_url)
        #: The URL for messages: without a ``user:password@`` part.
        self.shown_url = _without_userinfo(self.url)
        self._secret = shared_secret_key
        # The User-Agent, then the user's headers (which may replace it).
        self._base_headers = CaseInsensitiveDict({"User-Agent": USER_AGENT})
        self._base_headers.update(check_headers(headers))
        self.timeout = timeout
        self.request_timeout = float(request_timeout)
        #: The most any ``post()`` takes, in seconds (see the class docstring).
        self.max_duration = self.request_timeout + min(timeout[0], self.request_timeout)
        self.verify = verify
        self._session = requests.Session()
        # Proxies and CA settings from the environment, read once: requests
        # otherwise reads them (and ~/.netrc) again for every request.
        options = self._session.merge_environment_settings(self.url, {}, True, verify, None)
        self._proxies = dict(options["proxies"])
        self._verify: bool | str = verify if options["verify"] is None else options["verify"]
        self._cert = options["cert"]

    def __repr__(self) -> str:  # never the secret
        return f"Transport({self.shown_url!r})"

    def post(self, body: bytes, deadline: float | None = None) -> Answer:
        """Send one collection; never raises for network trouble.

        ``deadline`` (a ``time.monotonic()`` value) shortens the request's
        budget so the call returns by then, as close() and flush(timeout)
        need (it always gets ``MIN_TRY`` seconds, even past the deadline).
        """
        start = time.monotonic()
        end = start + self.request_timeout
        if deadline is not None:
            end = min(end, max(deadline, start + MIN_TRY))
        budget = end - start
        connect, read = self.timeout
        # total: urllib3 gives the wait for the answer only what the connect
        # and the upload left of the budget (Timeout.read_timeout).
        timeout = Timeout(connect=min(connect, budget), read=min(read, budget), total=budget)
        stamp = str(int(time.time()))
        headers = self._base_headers.copy()
        headers["Content-Type"] = "application/protobuf"
        headers["X-Hamustro-Time"] = stamp
        headers["X-Hamustro-Signature"] = signature(stamp, body, self._secret)
        upload = _Upload(body, end)
        try:
            # Inside the try: whatever prepare() refuses is an answer, never
            # an exception quoting a header value or the URL.
            request = requests.PreparedRequest()
            request.prepare(
                method="POST", url=self.url, headers=headers, data=upload if body else b""
            )
            # The adapter, not Session.send: with allow_redirects=False the
            # session still reads a 3xx's body (resolve_redirects consumes it
            # "so it can be released"); the adapter reads no body at all.
            adapter = self._session.get_adapter(self.url)
            response = adapter.send(
                request,
                stream=True,
                timeout=timeout,  # type: ignore[arg-type]  # a urllib3 Timeout is accepted (adapters.py)
                verify=self._verify,
                cert=self._cert,
                proxies=self._proxies,
            )
        except _UploadTooSlow:
            return Answer(
                None, f"the upload did not finish within {_seconds(budget)} s", sent=False
            )
        except requests.RequestException as exc:
            return _failure(exc, min(read, budget), min(connect, budget), upload.complete)
        except OSError as exc:  # e.g. a CA bundle path that does not exist: say which
            return Answer(None, f"request failed ({type(exc).__name__}: {_short(exc)})", sent=False)
        except Exception as exc:  # the type only: its text might quote a header value
            return Answer(None, f"request failed ({type(exc).__name__})", sent=False)
        try:
            location = response.headers.get("Location")
            return Answer(
                response.status_code,
                None,
                _retry_after(response.headers.get("Retry-After")),
                location=None if location is None else _shown_location(self.url, location),
            )
        finally:
            _finish(response)

    def close(self) -> None:
        self._session.close()


def _finish(response: requests.Response) -> None:
    """Be done with a response without reading its body.

    A body known to be empty (``Content-Length: 0``, or a 204/304) is
    finished without a read from the socket, and the connection goes back
    to the pool for the next request. Any other body is never read: the
    connection is closed instead (a new one costs a handshake; reading an
    unknown body could cost the thread or the memory).
    """
    raw = response.raw
    empty = response.status_code in (204, 304) or response.headers.get("Content-Length") == "0"
    if empty and "chunked" not in response.headers.get("Transfer-Encoding", "").lower():
        try:
            # Length 0: http.client reads 0 bytes (no recv) and closes its file.
            raw.read(decode_content=False)
        except Exception:  # a connection that cannot be finished is closed instead
            response.close()
            return
        raw.release_conn()
    else:
        response.close()


def _seconds(value: float) -> str:
    """A duration for a message, stable between attempts (the reporter compares lines)."""
    return f"{round(value, 1):g}"


def _shown_location(url: str, location: str) -> str:
    """A ``Location`` for messages: absolute, without ``user:password@``, one short line."""
    shown = _without_userinfo(urljoin(url, location.strip()))
    shown = "".join(c if c.isprintable() else "?" for c in shown)
    return shown if len(shown) <= 300 else shown[:300] + "..."


def _failure(
    exc: requests.RequestException, read_timeout: float, write_timeout: float, uploaded: bool
) -> Answer:
    """A stable one-line cause (no object addresses: the reporter compares lines).

    ``sent`` is False where the collector cannot have the whole request: the
    connection was never made, or it failed before the body was all out.
    """
    text = " ".join(str(e) for e in _chain(exc))
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return Answer(None, CONNECT_TIMEOUT, sent=False)
    if isinstance(exc, requests.exceptions.SSLError):
        return Answer(None, "TLS error (certificate or protocol); see `verify`", sent=False)
    if any(isinstance(e, ConnectionRefusedError) for e in _chain(exc)) or "refused" in text:
        return Answer(None, CONNECTION_REFUSED, sent=False)
    if "Name or service not known" in text or "NameResolution" in text or "getaddrinfo" in text:
        return Answer(None, NO_SUCH_HOST, sent=False)
    if not uploaded and any(isinstance(e, TimeoutError) for e in _chain(exc)):
        # Each block's write waits at most the connect timeout (urllib3).
        stalled = f"the upload made no progress for {_seconds(write_timeout)} s"
        return Answer(None, stalled, sent=False)
    if not uploaded and isinstance(exc, (requests.Timeout, requests.ConnectionError)):
        return Answer(None, "connection dropped during the upload", sent=False)
    if isinstance(exc, requests.Timeout):
        return Answer(None, f"no answer within {_seconds(read_timeout)} s")
    if isinstance(exc, requests.ConnectionError):
        return Answer(None, "connection dropped after the request was sent, without an answer")
    return Answer(None, f"request failed ({type(exc).__name__})", sent=uploaded)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
        if current is None and seen[-1].args:
            inner = seen[-1].args[0]
            current = inner if isinstance(inner, BaseException) else None
    return seen


def _without_userinfo(url: str) -> str:
    """
    >>> _without_userinfo("https://user:pw@host:8443/api/v1/track")
    'https://***@host:8443/api/v1/track'
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:200]
