"""``HamustroHandler``: a ``logging.Handler`` that turns event records into tracked events.

``emit`` only filters, maps, encodes and appends the event to the handler's
journal (a memory-mapped file in the queue folder: no network I/O, no system
call); the handler's :class:`~hamustro_logging.flusher.Flusher` threads (or
``hamustro-logging agent``) move it into the store and send it. Records
without an ``event`` attribute are ignored, so the handler can sit on the
root logger of an existing application.
"""

from __future__ import annotations

import logging
import os
import sys
import weakref
from typing import Any

from .config import Spec, check_schema, resolve
from .flusher import ON_FULL, SENDERS, Flusher
from .mapping import (
    EventError,
    describe,
    map_record,
    map_record_v2,
    record_body,
    record_body_v2,
)
from .tracker import TRACKER_OPTIONS, ClientTracker, TrackedEvent, only_in
from .wire import Event, journal_body, journal_body_v2

__all__ = ["HANDLER_OPTIONS", "HamustroHandler"]

#: The handler's own options (beyond ``TRACKER_OPTIONS``), with their defaults;
#: each may also come from its ``HAMUSTRO_*`` environment variable.
HANDLER_OPTIONS: dict[str, Spec] = {
    "is_testing": ("bool", None),  # schema 1 only; False when not given
    "tenant_id": (str, None),  # schema 2 only
    "user_id": (str, None),  # schema 2 only
    "durable": ("bool", False),
    "close_timeout": (float, 5.0),
    # Events in the journal not yet moved into the store: a writer that keeps
    # up with the store never needs more; a faster one waits (on_full).
    "max_buffer": (int, 100_000),
    "sender": (str, "thread"),
    "on_full": (str, "wait"),
    "full_timeout": (float, 5.0),
    "durable_timeout": (float, 0.5),
    "event_key": (str, "event"),
}

#: Loggers whose records never become events, so nothing can loop back: the
#: library's own, and the HTTP stack it sends with.
_NEVER_FROM = ("hamustro_logging", "urllib3", "requests")

#: Every live handler, so a forked child can give each its own threads and
#: connections (weak: a handler that is garbage is not kept alive by this).
_HANDLERS: weakref.WeakSet[HamustroHandler] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for handler in list(_HANDLERS):
        handler._reopen_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class HamustroHandler(logging.Handler):
    """Send records that carry an ``event`` attribute to a Hamustro collector.

    Takes ``ClientTracker``'s arguments, all as keywords (so it works from
    ``logging.config.dictConfig``); any left out comes from its ``HAMUSTRO_*``
    environment variable, else its default. Plus its own:

    * ``is_testing`` (False): the default ``is_testing`` of events (schema 1
      only: schema 2 has no such field, and refuses it);
    * ``tenant_id``, ``user_id`` (None; schema 2 only): the user of events
      whose record has none of its own and when ``tracker.set_user`` set
      none (a record's own wins, then a :class:`~hamustro_logging.context`'s,
      then the stored user, then these);
    * ``durable`` (False): with True, each event is on stable storage
      before ``emit`` returns (an ``msync`` of the journal page: about a
      disk flush per event). Without it the event is in the journal file
      when ``emit`` returns, which survives the process however it ends
      (SIGKILL, the OOM killer, ``os._exit``), though not a power cut
      before the kernel writes the page back;
    * ``close_timeout`` (5 s): how long ``close()`` (and ``flush()`` without
      a timeout) may take; what is not sent by then stays in the folder;
    * ``event_key`` ("event"): the record attribute that holds the event
      name (structlog's standard-library integration already uses ``event``
      for the message, so there it is another key, e.g. ``track``);
    * ``sender`` ("thread"): who moves the journal into the store and sends:
      "thread", two threads of this handler; "agent", a separate
      ``hamustro-logging agent`` process on the same folder (this process
      then starts no thread and does no network I/O);
    * ``max_buffer`` (100,000): events in the journal not yet moved into
      the store, at most;
    * ``on_full`` ("wait"): what ``emit`` does when ``max_buffer`` events
      wait to be moved. "wait": wait for room, at most ``full_timeout``
      seconds (5 s), so a producer faster than the store runs at its pace
      and loses nothing; it never waits when the journal cannot be written
      (a full disk), nor again after a wait timed out until something was
      moved, nor on the handler's own threads. "drop": never wait. Dropped
      events are counted in ``stats()["dropped"]`` (``storage``,
      ``buffer_full``) and reported on stderr with their cause, once per
      streak;
    * ``durable_timeout``: accepted for compatibility; it has no effect
      since the journal (0.3.0): ``emit`` never waits for the store.

    A process forked with the handler (``multiprocessing``'s fork, a
    prefork server) writes a journal of its own from the fork on and starts
    no thread: the process that built the handler moves and sends its
    events, and adopts its journal when it ends, however it ends.

    >>> import logging, tempfile
    >>> handler = HamustroHandler(
    ...     collector_url="http://127.0.0.1:9", shared_secret_key="secret",
    ...     device_id="device-1", client_id="client-1", system_version="1",
    ...     product_version="1.0.0", queue_dir=tempfile.mkdtemp())
    >>> log = logging.getLogger("doctest.shop")
    >>> log.addHandler(handler); log.propagate = False
    >>> log.warning("order placed", extra={"event": "order_placed", "user_id": 7})
    >>> log.warning("a plain line, ignored by this handler")
    >>> handler.flush(timeout=2)  # nothing listens on port 9: kept on disk
    False
    >>> handler.stats()["pending"]
    1
    >>> log.removeHandler(handler); handler.close()
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
        level: int | str = logging.NOTSET,
        is_testing: bool | None = None,
        tenant_id: str | None = None,
        user_id: str | int | None = None,
        durable: bool | None = None,
        close_timeout: float | None = None,
        max_buffer: int | None = None,
        on_full: str | None = None,
        full_timeout: float | None = None,
        durable_timeout: float | None = None,
        event_key: str | None = None,
        sender: str | None = None,
        **tracker_options: Any,
    ) -> None:
        # Everything that can fail comes before logging.Handler.__init__, which
        # registers the handler for logging.shutdown(): a handler whose
        # constructor raised must leave nothing behind for shutdown to call.
        given = dict(locals())
        o = resolve(given, HANDLER_OPTIONS)
        schema = check_schema(
            resolve(tracker_options, {"schema": TRACKER_OPTIONS["schema"]})["schema"]
        )
        if schema == 2 and o["is_testing"] is not None:
            raise only_in(1, "is_testing", given, "handler-wide option")
        for name in ("tenant_id", "user_id"):
            if schema == 1 and o[name] is not None:
                raise only_in(2, name, given, "handler-wide option")
        if o["is_testing"] is None:
            o["is_testing"] = False
        if isinstance(o["user_id"], int) and not isinstance(o["user_id"], bool):
            o["user_id"] = str(o["user_id"])
        for name in ("tenant_id", "user_id"):
            if o[name] is not None and (not isinstance(o[name], str) or not o[name]):
                raise ValueError(f"{name} must be a non-empty str, got {o[name]!r:.64}")
        for name in ("is_testing", "durable"):
            if not isinstance(o[name], bool):
                raise TypeError(f"{name} must be bool, got {type(o[name]).__name__}")
        max_buffer = o["max_buffer"]
        for name in ("close_timeout", "full_timeout", "durable_timeout"):
            value = o[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be seconds >= 0, got {value!r}")
        if o["sender"] not in SENDERS:
            raise ValueError(f"sender must be 'thread' or 'agent', got {o['sender']!r}")
        if o["on_full"] not in ON_FULL:
            raise ValueError(f"on_full must be 'wait' or 'drop', got {o['on_full']!r}")
        if isinstance(max_buffer, bool) or not isinstance(max_buffer, int) or max_buffer < 1:
            raise ValueError(f"max_buffer must be an int >= 1, got {max_buffer!r}")
        if not isinstance(o["event_key"], str) or not o["event_key"]:
            raise ValueError(f"event_key must be a non-empty str, got {o['event_key']!r}")
        unknown = set(tracker_options) - set(TRACKER_OPTIONS)
        if unknown:
            raise TypeError(
                f"HamustroHandler got unexpected option(s): {', '.join(sorted(unknown))}"
            )
        self.tracker = ClientTracker(
            collector_url, shared_secret_key, device_id, client_id, system_version,
            product_version, system, product_git_hash, queue_size, queue_retention, queue_dir,
            open_lazily=True, **tracker_options,
        )  # fmt: skip
        super().__init__(level)
        self.schema = self.tracker.schema
        self.is_testing: bool = o["is_testing"]
        self.tenant_id: str | None = o["tenant_id"]
        self.user_id: str | None = o["user_id"]
        self.durable: bool = o["durable"]
        self.close_timeout = float(o["close_timeout"])
        self.max_buffer = max_buffer
        self.on_full: str = o["on_full"]
        self.full_timeout = float(o["full_timeout"])
        self.durable_timeout = float(o["durable_timeout"])
        self.max_event_bytes = self.tracker.max_event_bytes
        self.event_key: str = o["event_key"]
        self.sender: str = o["sender"]
        #: The default mapping in one pass (mapping.record_body, record_body_v2),
        #: unless a subclass maps records its own way.
        self._one_pass = type(self).map_record is HamustroHandler.map_record
        self._closed = False
        self._flusher = Flusher(
            self.tracker, self.max_buffer, name=f"hamustro-{id(self):x}",
            on_full=self.on_full, full_timeout=self.full_timeout, sender=self.sender,
            sync=self.durable,
        )  # fmt: skip
        self._flusher.start()
        _HANDLERS.add(self)

    # -- the stdlib handler contract --------------------------------------------

    def map_record(self, record: logging.LogRecord) -> TrackedEvent | None:
        """Turn a record into an event, or ``None`` to ignore the record.

        Override it to change the mapping, for example to take the event name
        from another attribute or to send every ``extra`` attribute as params
        (see :func:`hamustro_logging.extra_attributes`); build the event with
        :func:`hamustro_logging.build_event` (schema 1) or
        :func:`hamustro_logging.build_event_v2` (schema 2), which check every
        field, and return the handler's schema's event. The default mapping
        applies the fields of the :class:`~hamustro_logging.context` in
        force; an override that builds events itself reads them with
        :func:`hamustro_logging.current_context`. Runs on the logging
        thread, under the handler's lock; raise
        :class:`~hamustro_logging.EventError` for a bad field.
        """
        if self.schema == 1:
            return map_record(record, self.is_testing, self.max_event_bytes, self.event_key)
        tenant, user = self.tracker.user
        return map_record_v2(
            record, self.max_event_bytes, self.event_key,
            self.tenant_id if tenant is None else tenant, self.user_id if user is None else user,
        )  # fmt: skip

    def emit(self, record: logging.LogRecord) -> None:
        """Map the record and append it to the journal; never raises, never does network I/O.

        Waits only when ``max_buffer`` events wait to be moved (``on_full``),
        or with ``durable=True`` for the page to reach the disk.
        """
        try:
            name = str(record.name)
            if name.startswith(_NEVER_FROM) and name.partition(".")[0] in _NEVER_FROM:
                return
            d = record.__dict__
            if self._one_pass and self.event_key not in d and "extra" not in d:
                return  # a plain log line: the default mapping ignores it
            ip = self.tracker.cached_ip()
            # The common event in one pass; None: the full path (map_record) decides.
            if not self._one_pass:
                body = None
            elif self.schema == 1:
                body = record_body(
                    record, self.is_testing, self.max_event_bytes, self.event_key, ip
                )
            else:
                tenant, user = self.tracker.user
                body = record_body_v2(
                    record, self.max_event_bytes, self.event_key,
                    self.tenant_id if tenant is None else tenant,
                    self.user_id if user is None else user, ip,
                )  # fmt: skip
            if body is None:
                event = self.map_record(record)
                if event is None:
                    return
                if isinstance(event, Event):
                    body = journal_body(event, ip)
                else:
                    body = journal_body_v2(event, ip)
            self._flusher.put(body)
        except Exception:
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        """Say in one line on stderr why a record was not queued, and count it.

        A bad field gives ``hamustro-logging: event from logger 'app' not
        queued: hamustro event field 'user_id': expected int, got str``.
        """
        exc = sys.exc_info()[1]
        reason = "invalid" if isinstance(exc, EventError) else "error"
        self.tracker.stats_counters.drop(reason)
        # describe(): even an exception whose __str__ raises is said, not raised.
        what = "unknown error" if exc is None else describe(exc).removeprefix("EventError: ")
        try:
            name = str(record.name)
        except Exception:
            name = "?"
        self.tracker.reporter.once(f"event from logger {name!r} not queued: {what}")

    # The stdlib's flush returns None; this one says whether everything was sent.
    def flush(self, timeout: float | None = None) -> bool:  # type: ignore[override]
        """Write the buffer and send everything now.

        True if every event this handler stored before the call is
        delivered; events of other processes sharing the folder do not
        count (they are theirs to send). Waits at most ``timeout`` seconds
        (``close_timeout`` when None, so ``logging.shutdown()`` cannot hang
        on a dead collector or a locked database).
        """
        if self._closed:
            return False
        self.acquire()  # the journal has one writer at a time
        try:
            self._flusher.retry_journal_now()
        finally:
            self.release()
        return self._flusher.flush(self.close_timeout if timeout is None else timeout)

    def close(self) -> None:
        """Stop the threads after one last attempt of at most ``close_timeout`` seconds.

        What is not sent stays in the folder (its store, or the journal for
        the next process to adopt) and goes out after the next start. Never
        takes longer than ``close_timeout``: a request still in flight then
        gives its batch back (it is sent again later). An event logged after
        ``close()`` still goes to the journal, for another process to move.
        """
        self._flusher.wake_waiting()  # an emit waiting for room would hold the lock below
        self.acquire()  # no emit() is half-way when _closed flips (reentrant in shutdown)
        try:
            if self._closed:
                super().close()
                return
            self._closed = True
            self._flusher.retry_journal_now()
            left = self._flusher.in_memory()
        finally:
            self.release()
        if left:  # the journal never took them: said and counted, never silent
            self.tracker.stats_counters.drop("closed", left)
            self.tracker.reporter.once(
                f"{left} events could not be written to the journal in {self.tracker.queue_dir} "
                "before close(); they are lost"
            )
        _HANDLERS.discard(self)
        if self._flusher.stop(self.close_timeout):
            self.tracker.close()
        super().close()

    # -- more --------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters of this handler (see ``Stats.snapshot``) and the queue's state.

        ``buffered`` is the number of events in this handler's journal not
        yet moved into the store, and of those kept in memory while the
        journal could not be written.
        """
        out = self.tracker.stats()
        out["buffered"] = self._flusher.writer.waiting() + self._flusher.in_memory()
        return out

    def _reopen_after_fork(self) -> None:
        """In a forked child: a journal of its own, no thread, the parent's things untouched.

        The child lets go of the parent's journal segment (or the parent's
        lock on it would outlive the parent) and writes its own; the
        process that built the handler moves and sends it. The parent's
        SQLite connection and HTTP sockets are left untouched (never closed
        here, which could disturb the parent).
        """
        _INHERITED.append((self.tracker._queue, self.tracker.transport))
        # Locks a parent thread may have held at the fork stay held forever in
        # the child: every lock the child takes is made anew.
        self.tracker.stats_counters.reset_lock()
        self.tracker.reporter.reset_lock()
        self.tracker._open(defer=True)
        self._flusher.forget_after_fork()

    def __repr__(self) -> str:
        level = logging.getLevelName(self.level)
        return f"<{type(self).__name__} {self.tracker.transport.shown_url} ({level})>"


#: Connections a forked child inherited: kept referenced so they are never
#: closed (or garbage-collected) in the child.
_INHERITED: list[object] = []
