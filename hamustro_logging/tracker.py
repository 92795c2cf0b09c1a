"""The spec's ``ClientTracker``: a session, numbered events on disk, the send triggers.

No logging-framework concerns here; ``HamustroHandler`` builds on this class.
``ClientTracker`` itself is synchronous, as the spec's object is:
``track_event`` stores the event (on disk before it returns) and, when a
trigger fires, sends on the caller's thread.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, overload
from urllib.parse import urlsplit

from .config import (
    REQUIRED,
    Spec,
    check_schema,
    default_device_id,
    default_system,
    default_system_language,
    default_system_version,
    env_name,
    resolve,
)
from .delivery import Delivery, DrainResult
from .mapping import (
    DEFAULT_MAX_EVENT_BYTES,
    SCHEMA1_ONLY_FIELDS,
    SCHEMA2_ONLY_FIELDS,
    EventError,
    build_event,
    build_event_v2,
    describe,
)
from .queue import (
    Appended,
    Queue,
    QueueBusy,
    QueueFull,
    QueueUnusableHere,
    SessionInfo,
    sqlite_usable_after_fork,
)
from .report import Reporter
from .retry import Backoff
from .spool import Spool
from .stats import Stats
from .transport import Transport, check_headers, track_url
from .transport import _without_userinfo as without_userinfo
from .wire import (
    ENVIRONMENTS,
    Event,
    Event2,
    collection_header,
    collection_header_v2,
    encode_payloads,
    encode_payloads_v2,
    environment,
    md5hex,
    session_id,
    session_id_v2,
    sha256hex,
)

__all__ = [
    "SCHEMA2_OPTIONS",
    "TRACKER_OPTIONS",
    "ClientTracker",
    "TrackedEvent",
    "accepted_destinations",
    "default_queue_dir",
    "destination_id",
]

#: A validated event of either schema (a tracker stores only its own schema's).
TrackedEvent = Event | Event2

#: Every option: its type (for its ``HAMUSTRO_*`` environment variable) and
#: its default. The options table in docs/handler.md lists the same.
TRACKER_OPTIONS: dict[str, Spec] = {
    "collector_url": (str, REQUIRED),
    "shared_secret_key": (str, REQUIRED),
    "device_id": (str, default_device_id),
    "client_id": (str, REQUIRED),
    "system_version": (str, default_system_version),
    "product_version": (str, REQUIRED),
    "system": (str, default_system),
    "product_git_hash": (str, None),
    # 1: the collector of pseudo-client.md; 2: upstream's newest (pseudo-client-v2).
    "schema": ("schema", 1),
    # Schema 2's collection fields (refused with schema 1). env is required
    # with schema 2; system_language defaults to the process's locale there.
    "env": (str, None),
    "device_make": (str, None),
    "device_model": (str, None),
    "system_language": (str, None),
    "browser": (str, None),
    "browser_version": (str, None),
    "product_language": (str, None),
    # Extra HTTP headers on every request (a JSON object in $HAMUSTRO_HEADERS).
    "headers": ("headers", None),
    "queue_size": (int, 20),
    "queue_retention": (float, 1440.0),
    "queue_dir": (str, None),
    "detect_ip": ("bool", True),
    "timeout": ("timeout", (3.05, 10.0)),
    "request_timeout": (float, 30.0),  # connect + upload + wait, in all (Transport.max_duration)
    "verify": ("verify", True),
    # 500 a request: 2,000 measured about 20% faster end to end, but the longer
    # bursts of work on the handler's threads raised the application's emit
    # cost by a third (benchmarks/emit_cost.py, dead_collector.py); emit wins.
    "max_batch_events": (int, 500),
    # 64 KiB a request: under every common proxy body limit (nginx's default
    # is 1 MiB, some API gateways allow 100 KB); a 413 lowers it further.
    "max_batch_bytes": (int, 64 * 1024),
    "max_event_bytes": (int, DEFAULT_MAX_EVENT_BYTES),
    "max_queue_events": (int, 10_000_000),
    "max_queue_bytes": (int, 1 << 30),
    # Never take the last of the disk: below this much free space new events
    # are refused (kept in memory by the handler), so that sending, which
    # needs a little space for leases and deletes and frees the rest, works.
    "min_free_bytes": (int, 64 << 20),
    "backoff_base": (float, 1.0),
    "backoff_cap": (float, 300.0),
}


#: The longest a lazily opening tracker (the handler's) waits for another
#: process's write lock in its constructor.
_LAZY_OPEN_WAIT = 0.5

#: Options of schema 2 only: given with schema 1 they are refused.
SCHEMA2_OPTIONS = (
    "env",
    "device_make",
    "device_model",
    "system_language",
    "browser",
    "browser_version",
    "product_language",
)


def only_in(schema: int, name: str, given: Mapping[str, Any], where: str = "option") -> ValueError:
    """The error for an option of ``schema`` only, given with the other one.

    Says where it came from (an argument or its environment variable) and
    which setting to change.
    """
    source = f"${env_name(name)}" if given.get(name) is None else name
    other = 1 if schema == 2 else 2
    return ValueError(
        f"{source}: the {where} {name} exists only in schema {schema}; this one uses schema "
        f"{other} (schema={other}, or $HAMUSTRO_SCHEMA): set schema={schema} or remove {name}"
    )


def default_queue_dir(client_id: str, collector_url: str) -> Path:
    """``$XDG_CACHE_HOME/hamustro-logging/<client_id>-<hash>`` (``~/.cache`` without it).

    The hash covers the client id and the collector's URL (without any
    password), so a production and a staging app with the same client id on
    one host never share a folder by default.

    >>> default_queue_dir("my app/1", "https://collector.example").name
    'my_app_1-74b2df29'
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", client_id)[:64]
    key = f"{client_id}\n{without_userinfo(track_url(collector_url))}"
    return Path(base) / "hamustro-logging" / f"{safe}-{md5hex(key)[:8]}"


def destination_id(
    collector_url: str, shared_secret_key: str, headers: Mapping[str, str] | None = None
) -> str:
    """Where a queued event goes and who it claims to be, as a one-way hash.

    Everything that decides it: the collector's URL *with* its
    ``user:password@`` part, the key, and the extra ``headers`` (names in
    any case, and their values). Two deployments told apart only by a header
    a proxy reads (``X-Tenant``) or by the user in the URL get two
    destinations, and a sender only sends what was logged for its own. The
    secret parts (the key, the URL's user part, the header values) go in
    only through SHA-256: the id stored with every group reveals none of
    them. Without a user part and headers the id is the one earlier
    versions stored, so their folders keep working.

    >>> a = destination_id("https://c.example", "k", {"X-Tenant": "a"})
    >>> a == destination_id("https://c.example", "k", {"x-tenant": "a"})
    True
    >>> a == destination_id("https://c.example", "k", {"X-Tenant": "b"})
    False
    >>> destination_id("https://u:pw@c.example", "k") == destination_id("https://c.example", "k")
    False
    """
    url = track_url(collector_url)
    netloc = urlsplit(url).netloc
    secret = shared_secret_key
    extras = [f"user:{netloc.rpartition('@')[0]}"] if "@" in netloc else []
    extras += [f"header:{k.lower()}:{v}" for k, v in sorted((headers or {}).items())]
    if extras:
        secret += "\0" + "\0".join(extras)
    return _destination_hash(url, secret)


def _destination_hash(url: str, secret: str) -> str:
    secret_hash = sha256hex("hamustro-logging destination:" + secret)
    return md5hex(f"{without_userinfo(url)}\n{secret_hash}")[:16]


def accepted_destinations(
    collector_url: str, shared_secret_key: str, headers: Mapping[str, str] | None = None
) -> frozenset[str]:
    """The destinations a sender of this configuration sends: its own, and its pre-0.3 form.

    Versions before the user part and the headers were in the destination
    bound events to the URL without its user part and the key only. Those
    events were logged before the upgrade, by whichever configuration of
    that URL and key, and nothing tells them apart any more: any sender of
    that URL and key sends them (as those versions did), so an upgrade
    never leaves them waiting.
    """
    return frozenset(
        {
            destination_id(collector_url, shared_secret_key, headers),
            _destination_hash(track_url(collector_url), shared_secret_key),
        }
    )


def _required(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a non-empty str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must be a non-empty str, got an empty str")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid Unicode") from None
    return value


def _optional(name: str, value: object) -> str | None:
    return None if value is None else _required(name, value)


def _timeout(value: object) -> tuple[float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value, value)
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return float(value[0]), float(value[1])
    raise ValueError(f"timeout must be seconds > 0 or a (connect, read) pair, got {value!r}")


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _size(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not value >= 0:  # also refuses NaN
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)


class _IpFinder:
    """The host's address toward the collector, found without sending anything.

    Connecting a UDP socket sends no packet; it only asks the kernel which
    local address routes to the collector. Cached for ``ttl`` seconds.
    """

    def __init__(self, collector_url: str, ttl: float = 300.0) -> None:
        parts = urlsplit(collector_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ttl = ttl
        self._value: bytes | None = None
        self._at = -ttl
        try:  # an address needs no DNS: find it now, so the first events carry it
            ipaddress.ip_address(self.host)
        except ValueError:
            if self.host == "localhost":
                self.get()
        else:
            self.get()

    def get(self) -> bytes | None:
        """The address, looked up again (DNS, maybe) when older than ``ttl``."""
        now = time.monotonic()
        if now - self._at >= self.ttl:
            self._value = self._find()
            self._at = now
        return self._value

    def cached(self) -> bytes | None:
        """The last address found, without any lookup: for paths that must not block."""
        return self._value

    def _find(self) -> bytes | None:
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
            family, _, _, _, address = infos[0]
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.connect(address)
                return str(sock.getsockname()[0]).encode("ascii")
        except (OSError, IndexError, UnicodeError):
            return None


class ClientTracker:
    """The spec's client: queue events on disk and send them per session.

    Required arguments missing or empty raise ``ValueError`` (``TypeError``
    for a wrong type) naming the argument. ``device_id`` is hashed with
    SHA-256 at once; the raw id is never stored or sent.

    >>> import tempfile
    >>> t = ClientTracker("http://127.0.0.1:9", "secret", "device-1", "client-1",
    ...                   "OS X 10.11", "1.0.0", queue_dir=tempfile.mkdtemp())
    >>> t.session
    'c3b261989df9cb95efb791759dd37e16'
    >>> t.track_event("signup", user_id=7, params={"plan": "pro"}, ip="203.0.113.7")
    1
    >>> t.load_number_per_session()
    {'c3b261989df9cb95efb791759dd37e16': 1}
    >>> t.close()
    """

    def __init__(
        self,
        collector_url: str | None = None,
        shared_secret_key: str | None = None,
        device_id: str | None = None,
        client_id: str | None = None,
        system_version: str | None = None,
        product_version: str | None = None,
        system: str | None = None,
        product_git_hash: str | None = None,
        queue_size: int | None = None,
        queue_retention: float | None = None,
        queue_dir: str | os.PathLike[str] | None = None,
        *,
        detect_ip: bool | None = None,
        timeout: float | Sequence[float] | None = None,
        request_timeout: float | None = None,
        verify: bool | str | None = None,
        max_batch_events: int | None = None,
        max_batch_bytes: int | None = None,
        max_event_bytes: int | None = None,
        max_queue_events: int | None = None,
        max_queue_bytes: int | None = None,
        min_free_bytes: int | None = None,
        backoff_base: float | None = None,
        backoff_cap: float | None = None,
        schema: int | None = None,
        env: str | int | None = None,
        device_make: str | None = None,
        device_model: str | None = None,
        system_language: str | None = None,
        browser: str | None = None,
        browser_version: str | None = None,
        product_language: str | None = None,
        headers: Mapping[str, str] | None = None,
        open_lazily: bool = False,
    ) -> None:
        given = dict(locals())
        o = resolve(given, TRACKER_OPTIONS)
        self.schema: int = check_schema(o["schema"])
        if self.schema == 1:
            for name in SCHEMA2_OPTIONS:
                if o[name] is not None:
                    raise only_in(2, name, given)
        collector_url, shared_secret_key = o["collector_url"], o["shared_secret_key"]
        device_id, client_id = o["device_id"], o["client_id"]
        system_version, product_version = o["system_version"], o["product_version"]
        system, product_git_hash = o["system"], o["product_git_hash"]
        queue_size, queue_retention, queue_dir = (
            o["queue_size"],
            o["queue_retention"],
            o["queue_dir"],
        )
        detect_ip, timeout, verify = o["detect_ip"], o["timeout"], o["verify"]
        max_batch_events, max_batch_bytes = o["max_batch_events"], o["max_batch_bytes"]
        max_event_bytes = o["max_event_bytes"]
        max_queue_events, max_queue_bytes = o["max_queue_events"], o["max_queue_bytes"]
        backoff_base, backoff_cap = o["backoff_base"], o["backoff_cap"]
        url = _required("collector_url", collector_url)
        scheme = urlsplit(url).scheme
        if scheme not in ("http", "https"):  # never the URL in the message: it may hold a password
            got = f"scheme {scheme!r}" if scheme else "no scheme"
            raise ValueError(f"collector_url must be an http:// or https:// URL, got {got}")
        secret = _required("shared_secret_key", shared_secret_key)
        self.device_id = sha256hex(_required("device_id", device_id))
        self.client_id = _required("client_id", client_id)
        self.system_version = _required("system_version", system_version)
        self.product_version = _required("product_version", product_version)
        self.system = _optional("system", system)
        self.product_git_hash = _optional("product_git_hash", product_git_hash)
        self.env: int | None = None
        #: Schema 2's optional collection fields (None with schema 1).
        self.collection_fields: dict[str, str | None] = {}
        if self.schema == 2:
            if o["env"] is None:
                raise ValueError(
                    f"env is required with schema 2: pass it or set ${env_name('env')} (a name "
                    f"such as 'production' or 'beta', or its number 0-{max(ENVIRONMENTS.values())})"
                )
            self.env = environment(o["env"])
            if o["system_language"] is None:
                o["system_language"] = default_system_language()
            self.collection_fields = {n: _optional(n, o[n]) for n in SCHEMA2_OPTIONS[1:]}
        extra_headers = check_headers(o["headers"])
        self.queue_size = _count("queue_size", queue_size)
        self.queue_retention = _seconds("queue_retention", queue_retention)
        self.max_event_bytes = _count("max_event_bytes", max_event_bytes)
        if not isinstance(detect_ip, bool):
            raise TypeError(f"detect_ip must be bool, got {type(detect_ip).__name__}")
        if not isinstance(verify, (bool, str)):
            raise TypeError(f"verify must be bool or a CA bundle path, got {type(verify).__name__}")

        self.session = self.generate_session()
        self.queue_dir = (
            Path(queue_dir) if queue_dir is not None else default_queue_dir(client_id, url)
        )
        self.max_batch_events = _count("max_batch_events", max_batch_events)
        self.max_batch_bytes = _count("max_batch_bytes", max_batch_bytes)
        self._queue_options: dict[str, Any] = {
            "chunk_events": self.max_batch_events,
            # Two chunks make a request: what a claim takes stays near the limit.
            "chunk_bytes": max(1, self.max_batch_bytes // 2),
            "max_events": _count("max_queue_events", max_queue_events),
            "max_bytes": _count("max_queue_bytes", max_queue_bytes),
            "min_free_bytes": _size("min_free_bytes", o["min_free_bytes"]),
        }
        self.destination = destination_id(url, secret, extra_headers)
        self._accepted = accepted_destinations(url, secret, extra_headers)
        #: The last nr this tracker handed out per session: carried into a new
        #: database if the folder is deleted or a corrupt one is set aside.
        self._numbers: dict[str, int] = {}
        self.storage_problem: str | None = None  # the last store's failure, until one succeeds
        self._encode: Callable[[Sequence[Any], int, bytes | None], list[bytes]]
        if self.env is None:
            self._header = collection_header(
                self.device_id, self.client_id, self.session, self.system_version,
                self.product_version, self.system, self.product_git_hash,
            )  # fmt: skip
            self._encode = encode_payloads
        else:
            self._header = collection_header_v2(
                self.device_id, self.client_id, self.session, self.system_version,
                self.product_version, self.env, system=self.system,
                product_git_hash=self.product_git_hash, **self.collection_fields,
            )  # fmt: skip
            self._encode = encode_payloads_v2
        #: (tenant_id, user_id) of ``set_user``: read when the queue opens.
        self.user: tuple[str | None, str | None] = (None, None)
        self._transport_options: dict[str, Any] = {"timeout": _timeout(timeout), "verify": verify}
        self._transport_options["headers"] = extra_headers
        self._transport_options["request_timeout"] = o["request_timeout"]
        self._url = url
        self._backoff = Backoff(
            base=_seconds("backoff_base", backoff_base),
            cap=_seconds("backoff_cap", backoff_cap),
        )
        self._secret = secret
        self._ip = _IpFinder(url) if detect_ip else None
        self.stats_counters = Stats()
        self.reporter = Reporter()
        self._open(defer=open_lazily)

    def _open(self, lazy: bool = False, defer: bool = False) -> None:
        """Open the queue and the transport (again in a forked child).

        ``lazy``: if the queue folder cannot be opened now, say so and open
        it on first use instead of raising (the handler must not stop the
        application from starting because a disk is full). ``defer``: do not
        even try now; the first use opens it.
        """
        self._queue: Queue | None = None
        self._store_lock = threading.Lock()
        self._open_lock = threading.Lock()
        self.transport = Transport(self._url, self._secret, **self._transport_options)
        self.delivery = Delivery(
            lambda: self.queue, self.transport, self.reporter, self.stats_counters,
            max_batch_events=self.max_batch_events, max_batch_bytes=self.max_batch_bytes,
            backoff=self._backoff, destination=self._accepted,
        )  # fmt: skip
        if defer:
            if self.schema == 2:
                self.user = self._read_user_file()
            return
        try:
            # Lazily (the handler, maybe under dictConfig): never wait long for
            # another process's lock; the first write opens it later.
            self._open_queue(busy_timeout=_LAZY_OPEN_WAIT if lazy else None)
        except Exception as exc:
            if not lazy:
                raise
            self.reporter.problem("store", f"cannot open the queue in {self.queue_dir}: {exc!r}")

    def _open_queue(self, busy_timeout: float | None = None) -> Queue:
        """Open the folder's queue (numbering goes on after every number handed out).

        ``busy_timeout``: wait at most that long for another process's write
        lock (an emit path must not wait the queue's full timeout).
        """
        queue = Queue(
            self.queue_dir,
            carry_numbers=self._numbers,
            notify=self.reporter.once,
            open_timeout=busy_timeout,
            **self._queue_options,
        )
        self._hid = queue.register_header(
            self.session, self._header, self.destination, busy_timeout=busy_timeout
        )
        if self.schema == 2:
            self.user = queue.load_user(self.client_id)
        self._queue = queue
        return queue

    @property
    def queue(self) -> Queue:
        """The queue, opened again if its folder or database file was removed or replaced.

        SQLite would otherwise go on writing into a deleted file, and every
        event after the deletion would be lost at the next start.
        """
        return self._current_queue()

    def _current_queue(self, busy_timeout: float | None = None) -> Queue:
        if not sqlite_usable_after_fork():
            raise QueueUnusableHere(
                "this process was forked while another thread of its parent was inside the "
                "queue's database (SQLite), so it never opens it; its events go through its "
                "journal, which the parent process (or an agent) moves and sends"
            )
        queue = self._queue
        if queue is not None and not queue.replaced():
            return queue
        with self._open_lock:  # one opener: the spool and send threads may both get here
            queue = self._queue
            if queue is None or queue.replaced():
                if queue is not None:
                    # Every number the store handed out (the spool's too) is carried.
                    for session, last in queue.last_known().items():
                        self._numbers[session] = max(self._numbers.get(session, 0), last)
                    self.reporter.once(
                        f"the queue in {self.queue_dir} was removed or replaced; opening a new "
                        "one (numbering goes on after the numbers already given)"
                    )
                    queue.close()
                queue = self._open_queue(busy_timeout)
        return queue

    def __repr__(self) -> str:  # never the secret
        return (
            f"ClientTracker({self.transport.shown_url!r}, client_id={self.client_id!r}, "
            f"session={self.session!r}, queue_dir={str(self.queue_dir)!r})"
        )

    # -- the spec's functions --------------------------------------------------

    def generate_session(self) -> str:
        """The spec's session id.

        md5hex(sha256hex(device_id) + ":" + client_id + ":" + system_version
        + ":" + product_version), with schema 2 + ":" + the env's number;
        computed once, in the constructor.
        """
        if self.env is not None:
            return session_id_v2(
                self.device_id, self.client_id, self.system_version, self.product_version, self.env
            )
        return session_id(self.device_id, self.client_id, self.system_version, self.product_version)

    def load_collections(self) -> list[SessionInfo]:
        """The unsent events on disk, per session (any session, not only ours)."""
        return self.queue.sessions()

    def load_number_per_session(self) -> dict[str, int]:
        """The last ``nr`` given in each session."""
        return self.queue.last_numbers()

    def load_last_sync_time(self) -> float:
        """Epoch seconds of the last successful send (or of the queue's creation)."""
        return self.queue.last_sync()

    @overload
    def track_event(
        self,
        event: str,
        user_id: int | None = None,
        params: str | dict[str, Any] | list[Any] | None = None,
        is_testing: bool = False,
        ip: str | None = None,
    ) -> int: ...

    @overload
    def track_event(
        self,
        event: str,
        params: Mapping[str, object] | None = None,
        *,
        user_id: str | int | None = None,
        tenant_id: str | None = None,
        ip: str | None = None,
        timezone: str | None = None,
        country: str | None = None,
    ) -> int: ...

    def track_event(self, event: str, *args: Any, **fields: Any) -> int:
        """Store one event (on disk before this returns); send if a trigger fires.

        Schema 1: ``track_event(event, user_id=None, params=None,
        is_testing=False, ip=None)``. Schema 2: ``track_event(event,
        params=None, *, user_id=None, tenant_id=None, ip=None, timezone=None,
        country=None)``, where ``params`` is a mapping (see
        :func:`~hamustro_logging.mapping.build_event_v2`) and an event
        without ``user_id``/``tenant_id`` takes those of :meth:`set_user`.

        Returns the event's ``nr``. Bad fields raise ``ValueError`` naming the
        field (a field of the other schema too); a full queue raises
        :class:`~hamustro_logging.queue.QueueFull`. Sending failures do not
        raise: the event stays queued, and the next attempt waits for the backoff.
        """
        record: TrackedEvent
        if self.schema == 1:
            for name in SCHEMA2_ONLY_FIELDS:
                if name in fields:
                    raise EventError(name, "exists only in schema 2; this tracker uses schema 1")
            record = self._event_v1(event, *args, **fields)
        else:
            for name in SCHEMA1_ONLY_FIELDS:
                if name in fields:
                    raise EventError(name, "does not exist in schema 2; remove it")
            if len(args) > 1:  # schema 1's track_event(event, user_id, params, ...)
                raise TypeError(
                    "with schema 2, track_event takes (event, params=None) positionally and "
                    "user_id, tenant_id, ip, timezone, country as keywords"
                )
            record = self._event_v2(event, *args, **fields)
        self.refresh_ip()  # this synchronous API may wait; the handler's emit never does
        done = self.store([record])
        self.send_if_due()
        if not done.stored:
            raise QueueFull(f"the queue in {self.queue_dir} is full; the event was not stored")
        return done.last_nr

    def _event_v1(
        self,
        event: str,
        user_id: int | None = None,
        params: str | dict[str, Any] | list[Any] | None = None,
        is_testing: bool = False,
        ip: str | None = None,
    ) -> Event:
        return build_event(
            event, user_id, params, is_testing, ip, time.time(),
            max_event_bytes=self.max_event_bytes,
        )  # fmt: skip

    def _event_v2(
        self,
        event: str,
        params: Mapping[str, object] | None = None,
        *,
        user_id: str | int | None = None,
        tenant_id: str | None = None,
        ip: str | None = None,
        timezone: str | None = None,
        country: str | None = None,
    ) -> Event2:
        tenant, user = self.user
        return build_event_v2(
            event, params, user if user_id is None else user_id,
            tenant if tenant_id is None else tenant_id, ip, timezone, country, time.time(),
            max_event_bytes=self.max_event_bytes,
        )  # fmt: skip

    def set_user(self, tenant_id: str | None, user_id: str | int | None) -> None:
        """The spec's ``SetUser`` (schema 2): events without their own user take this one.

        Stored in the queue folder (it survives a restart; None and None
        signs out). An ``int`` ``user_id`` is kept as its decimal string.
        Another process sharing the folder sees it when it next opens the
        queue (at its start).
        """
        if self.schema != 2:
            raise ValueError(
                "set_user exists only in schema 2; this tracker uses schema 1 "
                "(schema=1, or $HAMUSTRO_SCHEMA): set schema=2"
            )
        if tenant_id is not None and not isinstance(tenant_id, str):
            raise TypeError(f"tenant_id must be str or None, got {type(tenant_id).__name__}")
        if isinstance(user_id, int) and not isinstance(user_id, bool):
            user_id = str(int(user_id))
        elif user_id is not None and not isinstance(user_id, str):
            raise TypeError(f"user_id must be str, int or None, got {type(user_id).__name__}")
        tenant = None if tenant_id is None else _required("tenant_id", tenant_id)
        user = None if user_id is None else _required("user_id", user_id)
        with self._store_lock:
            self.queue.set_user(self.client_id, tenant, user)
            self._write_user_file(tenant, user)
        self.user = (tenant, user)

    def _user_file(self) -> Path:
        # A copy of the stored user in a file of its own, so that a handler
        # knows it from its first event without opening the store.
        return self.queue_dir / f"user-{md5hex(self.client_id)[:16]}.json"

    def _write_user_file(self, tenant: str | None, user: str | None) -> None:
        path = self._user_file()
        temporary = path.with_name(path.name + f".{os.getpid()}.new")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump([tenant, user], f)
            os.replace(temporary, path)
        except OSError as exc:  # the store holds the user all the same
            self.reporter.once(f"could not write {path}: {exc}")

    def _read_user_file(self) -> tuple[str | None, str | None]:
        try:
            fd = os.open(self._user_file(), os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd) as f:
                tenant, user = json.load(f)
        except (OSError, ValueError, TypeError):
            return (None, None)
        if all(v is None or (isinstance(v, str) and v) for v in (tenant, user)):
            return (tenant, user)
        return (None, None)

    def load_user(self) -> tuple[str | None, str | None]:
        """The spec's ``LoadUser``: (tenant_id, user_id) stored by :meth:`set_user` (read again)."""
        if self.schema != 2:
            return (None, None)
        self.user = self.queue.load_user(self.client_id)
        return self.user

    # -- building blocks (the handler uses these) ------------------------------

    def store(self, events: Sequence[TrackedEvent], busy_timeout: float | None = None) -> Appended:
        """Number and store validated events in one transaction.

        Events that do not fit in a full queue are counted as dropped
        (``queue_full``) and reported once per streak. Storage faults raise
        (:class:`~hamustro_logging.queue.DiskSpaceLow`, ``QueueBusy`` after
        ``busy_timeout`` seconds of another process's write lock, an
        ``OSError``...) and are remembered for ``stats()["storage_error"]``
        until a store succeeds.
        """
        # Never a lookup here: store() runs under emit() (durable mode) and
        # under flush(); refresh_ip() runs where a DNS wait hurts no one.
        default_ip = self._ip.cached() if self._ip is not None else None
        try:
            if not self._store_lock.acquire(timeout=-1 if busy_timeout is None else busy_timeout):
                raise QueueBusy(
                    f"another thread held the queue in {self.queue_dir} for over {busy_timeout:g} s"
                )
            try:
                queue = self._current_queue(busy_timeout)
                done = queue.append(
                    self.session, self._hid, events, default_ip,
                    busy_timeout=busy_timeout, encode=self._encode,
                )  # fmt: skip
            finally:
                self._store_lock.release()
        except Exception as exc:
            self.storage_problem = f"{type(exc).__name__}: {exc}"
            raise
        self.storage_problem = None
        if done.stored:
            self._numbers[self.session] = done.last_nr
        self.stats_counters.add("queued", done.stored)
        if done.dropped:
            self.stats_counters.drop("queue_full", done.dropped)
            self.reporter.problem(
                "queue_full",
                f"the queue in {self.queue_dir} is full ({queue.max_events} events or "
                f"{queue.max_bytes} bytes unsent); new events are dropped until it drains",
            )
        else:
            self.reporter.recovered("queue_full", "the queue has room again")
        return done

    def cached_ip(self) -> bytes | None:
        """The host's address as last looked up (never a lookup here), or None."""
        return self._ip.cached() if self._ip is not None else None

    def refresh_ip(self) -> None:
        """Look the host's address up again if the cached one is old (may do DNS)."""
        if self._ip is not None:
            self._ip.get()

    def is_due(self) -> bool:
        """The spec's triggers: enough unsent events, or the last sync is too old."""
        pending = self.queue.pending_count()
        if pending == 0:
            return False
        if pending >= self.queue_size:
            return True
        return time.time() - self.queue.last_sync() >= self.queue_retention * 60

    def send_if_due(self) -> DrainResult | None:
        """Send everything pending if a trigger fires (and no backoff is running)."""
        return self.delivery.drain() if self.is_due() else None

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything pending now; True if nothing is left.

        First moves in the journals of the folder that no live process
        moves (handlers that ended or were killed: see
        :mod:`hamustro_logging.spool`). Stops at the first failure (the
        events stay on disk) or after ``timeout`` seconds. Never raises: a
        queue that cannot be used now is said on stderr, and False returned.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self.adopt_journals()
        except Exception as exc:  # the store cannot take them now: they wait in their journals
            self.reporter.problem(
                "adopt", f"cannot move journals into the queue in {self.queue_dir}: {describe(exc)}"
            )
        return self.delivery.drain(deadline, force=True).left == 0

    def adopt_journals(self) -> int:
        """Move in the journal segments of the folder left to others; the events moved."""
        spool = Spool(
            self.queue_dir, lambda: self.queue, self.reporter.once,
            batch_events=self.max_batch_events,
        )  # fmt: skip
        try:
            return spool.move_others().events
        finally:
            spool.close()

    @property
    def header(self) -> bytes:
        """The collection header (fields before the payloads) of this tracker's events."""
        return self._header

    def stats(self) -> dict[str, Any]:
        """This process's counters (see ``Stats.snapshot``) and the queue's state.

        From the queue folder (all processes that share it): ``pending``
        (unsent events), ``queue_bytes`` (their encoded size),
        ``rejected_in_queue`` (events the collector refused, kept aside),
        ``aside_in_queue`` (rows that could not be used, kept aside) and
        ``last_sync`` (epoch seconds of the last 200). ``storage_error`` says
        why the last write failed (a full or nearly full disk, a lock held
        by another process...) until one succeeds; while the folder cannot
        even be read, the folder's figures are None.

        ``folder`` is the folder's ledger (every process's lifetime counts:
        ``stored``, ``sent``, ``resent``, ``rejected``, ``set_aside``,
        ``dropped``... see docs/stats.md), as ``status --json`` shows it;
        the other counters are this process's.
        """
        out = self.stats_counters.snapshot()
        out["storage_error"] = self.storage_problem
        try:
            queue = self.queue
            out["pending"] = queue.pending_count()
            out["queue_bytes"] = queue.pending_bytes()
            out["last_sync"] = queue.last_sync()
            out["rejected_in_queue"] = queue.rejected_count()
            out["aside_in_queue"] = queue.aside_count()
            out["folder"] = queue.ledger().as_dict()
        except Exception as exc:  # the folder is unusable now: say so, do not raise
            out.update(pending=None, queue_bytes=None, last_sync=None, rejected_in_queue=None)
            out.update(aside_in_queue=None, folder=None)
            out["storage_error"] = f"{type(exc).__name__}: {exc}"
        return out

    def close(self) -> None:
        """Close the HTTP session and this thread's database connection."""
        self.transport.close()
        if self._queue is not None:
            self._queue.close()

    def __enter__(self) -> ClientTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
