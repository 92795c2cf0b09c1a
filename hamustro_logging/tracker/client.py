"""The spec's ``ClientTracker``: a session, numbered events on disk, the send triggers.

No logging-framework concerns here; ``HamustroHandler`` builds on this class.
``ClientTracker`` itself is synchronous, as the spec's object is:
``track_event`` stores the event (on disk before it returns) and, when a
trigger fires, sends on the caller's thread.

Who calls what: the application's threads call the spec's functions
(``track_event``, ``set_user``, ``flush``...); ``HamustroHandler`` and its
flusher use the building blocks (``queue``, ``is_due``, ``delivery``,
``stats``...) from their threads. The tracker checks its options with
:mod:`.options`, reaches its folder's store through a
:class:`~.store.TrackerStore`, and sends with a ``Delivery``.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any, overload
from urllib.parse import urlsplit

from ..delivery import Delivery, DrainResult
from ..mapping import describe
from ..queue import Appended, Queue, QueueFull, SessionInfo
from ..report import Reporter
from ..retry import Backoff
from ..spool import Spool
from ..stats import Stats
from ..transport import Transport
from ..wire import session_id, session_id_v2
from .destinations import accepted_destinations, destination_id
from .events import TrackedEvent, encoding, tracked_event
from .options import required, settings
from .store import TrackerStore


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
        #: The last address found (reading it does no lookup: for paths that must not block).
        self.value: bytes | None = None
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
            self.value = self._find()
            self._at = now
        return self.value

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
        o = settings(dict(locals()))  # every option resolved and checked, in this order
        self.schema: int = o.schema
        self.device_id = o.device_id  # hashed: the raw id is never kept
        self.client_id = o.client_id
        self.system_version = o.system_version
        self.product_version = o.product_version
        self.system = o.system
        self.product_git_hash = o.product_git_hash
        self.env: int | None = o.env
        #: Schema 2's optional collection fields (None with schema 1).
        self.collection_fields: dict[str, str | None] = o.collection_fields
        self.queue_size = o.queue_size
        self.queue_retention = o.queue_retention
        self.max_event_bytes = o.max_event_bytes
        self.session = self.generate_session()
        self.queue_dir = o.queue_dir
        self.max_batch_events = o.max_batch_events
        self.max_batch_bytes = o.max_batch_bytes
        self.destination = destination_id(o.url, o.secret, o.headers)
        self._accepted = accepted_destinations(o.url, o.secret, o.headers)
        #: The last nr this tracker handed out per session: carried into a new
        #: database if the folder is deleted or a corrupt one is set aside.
        self._numbers: dict[str, int] = {}
        self.storage_problem: str | None = None  # the last store's failure, until one succeeds
        self._header, self._encode = encoding(o, self.session)
        self._options = o  # what the queue and the transport are opened with (again after a fork)
        self._backoff = Backoff(base=o.backoff_base, cap=o.backoff_cap)
        self._ip = _IpFinder(o.url) if o.detect_ip else None
        self.stats_counters = Stats()
        self.reporter = Reporter()
        self._open(defer=open_lazily)

    def _open(self, defer: bool = False) -> None:
        """Open the queue and the transport (again in a forked child).

        ``defer``: do not open the store now; its first use does (the
        handler: a damaged or locked store never stalls the application's
        start).
        """
        self._store = TrackerStore(
            self.queue_dir, self.session, self._header, self.destination,
            encode=self._encode, options=self._options.queue_options(), numbers=self._numbers,
            reporter=self.reporter, stats=self.stats_counters,
            client_id=self.client_id, keeps_user=self.schema == 2,
        )  # fmt: skip
        o = self._options
        self.transport = Transport(o.url, o.secret, **o.transport_options())
        self.delivery = Delivery(
            lambda: self.queue, self.transport, self.reporter, self.stats_counters,
            max_batch_events=self.max_batch_events, max_batch_bytes=self.max_batch_bytes,
            backoff=self._backoff, destination=self._accepted,
        )  # fmt: skip
        if defer:
            if self.schema == 2:
                self._store.read_user_file()
            return
        self._store.open()

    @property
    def queue(self) -> Queue:
        """The queue, opened again if its folder or database file was removed or replaced.

        SQLite would otherwise go on writing into a deleted file, and every
        event after the deletion would be lost at the next start.
        """
        return self._store.current()

    @property
    def _queue(self) -> Queue | None:
        # The queue as opened, if it was (a forked child keeps its parent's referenced).
        return self._store.opened

    @property
    def user(self) -> tuple[str | None, str | None]:
        """(tenant_id, user_id) of :meth:`set_user` (schema 2): read when the queue opens."""
        return self._store.user

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
        record = tracked_event(self.schema, self.max_event_bytes, self.user, event, args, fields)
        self.refresh_ip()  # this synchronous API may wait; the handler's emit never does
        done = self.store([record])
        self.send_if_due()
        if not done.stored:
            raise QueueFull(f"the queue in {self.queue_dir} is full; the event was not stored")
        return done.last_nr

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
        tenant = None if tenant_id is None else required("tenant_id", tenant_id)
        user = None if user_id is None else required("user_id", user_id)
        self._store.set_user(tenant, user)

    def load_user(self) -> tuple[str | None, str | None]:
        """The spec's ``LoadUser``: (tenant_id, user_id) stored by :meth:`set_user` (read again)."""
        if self.schema != 2:
            return (None, None)
        return self._store.load_user()

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
        try:
            done = self._store.append(events, self.cached_ip(), busy_timeout)
        except Exception as exc:
            self.storage_problem = f"{type(exc).__name__}: {exc}"
            raise
        self.storage_problem = None
        return done

    def cached_ip(self) -> bytes | None:
        """The host's address as last looked up (never a lookup here), or None."""
        ip = self._ip
        return None if ip is None else ip.value

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
        self._store.close()

    def __enter__(self) -> ClientTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
