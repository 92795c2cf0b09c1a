"""Sign and POST one collection; say what came back. No storage, no retry logic.

Called by whoever sends (the handler's flusher thread or
``ClientTracker.flush``); one ``requests.Session`` per ``Transport`` reuses
connections. A ``Transport`` is used by one thread at a time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import requests

from .wire import signature

__all__ = ["Answer", "Transport", "track_url"]

TRACK_PATH = "/api/v1/track"
USER_AGENT = "hamustro-logging/0.1.0"


def track_url(collector_url: str) -> str:
    """The collector's base URL with ``/api/v1/track`` appended (once).

    >>> track_url("http://127.0.0.1:8080/"), track_url("http://h/api/v1/track")
    ('http://127.0.0.1:8080/api/v1/track', 'http://h/api/v1/track')
    """
    url = collector_url.rstrip("/")
    return url if url.endswith(TRACK_PATH) else url + TRACK_PATH


@dataclass(frozen=True)
class Answer:
    """What one POST got: an HTTP status, or the error that prevented one.

    ``sent`` is False only when the request certainly never reached the
    collector (the connection was refused); after a timeout or a reset the
    collector may have stored the batch, so a resend may be a duplicate.
    """

    status: int | None
    error: str | None = None
    retry_after: float | None = None
    sent: bool = True

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


class Transport:
    """POSTs signed collections to ``{collector_url}/api/v1/track``.

    ``timeout`` is requests' (connect, read) pair: every request has one.
    ``verify`` is True (check TLS against the system's CAs), a CA bundle
    path, or False (never do that outside development).
    """

    def __init__(
        self,
        collector_url: str,
        shared_secret_key: str,
        *,
        timeout: tuple[float, float] = (3.05, 10.0),
        verify: bool | str = True,
    ) -> None:
        self.url = track_url(collector_url)
        #: The URL for messages: without a ``user:password@`` part.
        self.shown_url = _without_userinfo(self.url)
        self._secret = shared_secret_key
        self.timeout = timeout
        self.verify = verify
        self._session = requests.Session()
        # Proxies and CA settings from the environment, read once: requests
        # otherwise reads them (and ~/.netrc) again for every request.
        self._send_options = self._session.merge_environment_settings(
            self.url, {}, False, verify, None
        )

    def __repr__(self) -> str:  # never the secret
        return f"Transport({self.shown_url!r})"

    def post(self, body: bytes, deadline: float | None = None) -> Answer:
        """Send one collection; never raises for network trouble.

        ``deadline`` (a ``time.monotonic()`` value) shortens the timeout so
        the call returns by then, as close() and flush(timeout) need.
        """
        timeout = self.timeout
        if deadline is not None:
            left = max(0.05, deadline - time.monotonic())
            timeout = (min(timeout[0], left), min(timeout[1], left))
        stamp = str(int(time.time()))
        headers = {
            "User-Agent": USER_AGENT,
            "Content-Type": "application/protobuf",
            "X-Hamustro-Time": stamp,
            "X-Hamustro-Signature": signature(stamp, body, self._secret),
        }
        request = requests.PreparedRequest()
        request.prepare(method="POST", url=self.url, headers=headers, data=body)
        try:
            response = self._session.send(request, timeout=timeout, **self._send_options)
        except requests.RequestException as exc:
            return _failure(exc, timeout[1])
        except Exception as exc:  # e.g. a CA bundle path that does not exist (OSError)
            return Answer(None, f"request failed ({type(exc).__name__}: {_short(exc)})", sent=False)
        response.close()
        return Answer(response.status_code, None, _retry_after(response.headers.get("Retry-After")))

    def close(self) -> None:
        self._session.close()


def _failure(exc: requests.RequestException, read_timeout: float) -> Answer:
    """A stable one-line cause (no object addresses: the reporter compares lines).

    ``sent`` is False only where the request cannot have reached the
    collector: the connection was never made.
    """
    text = " ".join(str(e) for e in _chain(exc))
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return Answer(None, "connection timed out", sent=False)
    if isinstance(exc, requests.exceptions.SSLError):
        return Answer(None, "TLS error (certificate or protocol); see `verify`", sent=False)
    if isinstance(exc, requests.Timeout):
        return Answer(None, f"no answer within {read_timeout:g} s")
    if any(isinstance(e, ConnectionRefusedError) for e in _chain(exc)) or "refused" in text:
        return Answer(None, "connection refused", sent=False)
    if "Name or service not known" in text or "NameResolution" in text or "getaddrinfo" in text:
        return Answer(None, "cannot resolve the collector's host name", sent=False)
    if isinstance(exc, requests.ConnectionError):
        return Answer(None, "connection dropped without an answer")
    return Answer(None, f"request failed ({type(exc).__name__})")


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
