"""Helpers for testing an application's instrumentation: capture its events, run a collector.

:class:`EventCapture` answers "does checkout log ``order_placed`` with the
total?" with no collector and no network: it attaches a real
:class:`~hamustro_logging.HamustroHandler` (or the application's subclass of
it) to the root logger, with ``sender="agent"`` (no thread, no network I/O)
and a temporary queue folder that it removes at the end. Reading it moves the
handler's journal into the folder's store with a
:class:`~hamustro_logging.spool.Spool`, as ``hamustro-logging agent`` does,
and decodes the stored events as ``hamustro-logging export`` does: each
event is what a sender would POST (mapping, user, params, session,
numbering), decoded into a dict.

:class:`LoopbackCollector` is the development collector on loopback, with
what a test needs to point a handler at it (``handler_options()``), for
end-to-end tests; :class:`CollectorFactory` starts as many as a test asks
for and stops them.

Who calls what: everything here runs on the test's thread (the handler's
``emit`` on whichever thread logs; the collector serves on threads of its
own). The pytest fixtures ``hamustro_events`` and ``hamustro_collector``
(:mod:`hamustro_logging.pytest_plugin`) wrap these; they work in any test
runner as context managers.

>>> import logging
>>> with EventCapture() as events:
...     logging.getLogger("shop").warning(
...         "order placed", extra={"event": "order_placed", "params": {"total": 12}})
...     events.assert_logged("order_placed", params={"total": 12})["nr"]
1
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, overload

from .collector import DevCollector
from .config import env_name, resolve
from .handler import HamustroHandler
from .mapping import build_event, build_event_v2, describe
from .payload_v2_pb2 import Collection as Collection2
from .queue import Queue
from .reader import QueueReader, event_record
from .spool import Spool
from .tracker import TRACKER_OPTIONS
from .wire import encode_payloads_v2

__all__ = [
    "CAPTURE_DEFAULTS",
    "CollectorFactory",
    "EventCapture",
    "LoopbackCollector",
]

#: The key a loopback collector checks signatures with, unless told another.
_SECRET = "hamustro-testing"  # noqa: S105 -- a test collector's, not a credential
#: The options a capture's handler takes when neither given nor set in their
#: ``HAMUSTRO_*`` variable: an identity of its own, and a loopback URL that
#: nothing is ever sent to (``sender="agent"``).
CAPTURE_DEFAULTS: dict[str, Any] = {
    "collector_url": "http://127.0.0.1:9",
    "shared_secret_key": _SECRET,
    "device_id": "testing-device",
    "client_id": "testing",
    "system_version": "testing",
    "product_version": "0.0.0",
    # the host's address toward a collector that does not exist is no fact of the app
    "detect_ip": False,
}
#: Schema 2's env when neither given nor in $HAMUSTRO_ENV.
_TESTING_ENV = "TESTING"

_UNSET: Any = object()


def _decoded(parameters: object) -> Any:
    """``parameters`` as a test compares them: JSON decoded when it is JSON."""
    if not isinstance(parameters, str):
        return parameters  # None, or schema 2's dict (export's form)
    try:
        return json.loads(parameters)
    except ValueError:
        return parameters  # schema 1 params given as a str that is not JSON


def params_of(event: Mapping[str, Any]) -> Any:
    """An event's params, decoded: a dict for a mapping (schema 2: every value a str)."""
    if "params" in event:
        return event["params"]
    return _decoded(event.get("parameters"))


def _as_sent(schema: int, params: object) -> Any:
    """``params`` as the handler of ``schema`` would send them, decoded as :func:`params_of` does.

    Mapped by the handler's own functions: schema 1 as its JSON; schema 2 as
    its parameters, each value a str (``12`` as ``"12"``, ``True`` as ``"true"``).

    >>> _as_sent(1, {"total": 12}), _as_sent(2, {"total": 12, "paid": True, "note": None})
    ({'total': 12}, {'total': '12', 'paid': 'true'})
    """
    if schema == 1:
        raw = build_event("x", params=params, at=0).params
        return None if raw is None else _decoded(raw.decode("utf-8"))
    frame = encode_payloads_v2([build_event_v2("x", params=params, at=0)], 1)[0]
    payload = Collection2.FromString(frame).payloads[0]
    return {p.name: p.value for p in payload.parameters}


def _field_as_sent(schema: int, name: str, value: object) -> object:
    """A field as the handler sends it: schema 2's ``user_id`` is a str (7 is ``"7"``)."""
    if schema == 2 and name == "user_id" and value is not None:
        user = build_event_v2("x", user_id=value, at=0).user_id
        return None if user is None else user.decode("utf-8")
    return value


def _matches(event: Mapping[str, Any], name: str, params: Any, fields: Mapping[str, Any]) -> bool:
    if event.get("event") != name:
        return False
    if params is not _UNSET:
        got = params_of(event)
        if isinstance(params, dict) and isinstance(got, dict):
            if any(key not in got or got[key] != value for key, value in params.items()):
                return False
        elif got != params:
            return False
    return all(key in event and event[key] == value for key, value in fields.items())


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _described(event: Mapping[str, Any], fields: Sequence[str]) -> str:
    shown = [f"nr {event.get('nr')} {event.get('event')!r}"]
    shown += [f"{key}={event.get(key)!r}" for key in fields]
    shown.append(f"params={params_of(event)!r}")
    return " ".join(shown)


class _Assertions:
    """``named``, ``assert_logged`` and ``assert_not_logged`` over a list of decoded events."""

    def _sent_schema(self) -> int:
        raise NotImplementedError

    def _current(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _wait_for_more(self, seen: int, deadline: float) -> None:
        """Return once more than ``seen`` events are there, or at ``deadline``."""

    def _problems(self) -> list[str]:
        return []

    def named(self, name: str) -> list[dict[str, Any]]:
        """The events called ``name``, in the order they were numbered."""
        return [event for event in self._current() if event.get("event") == name]

    def names(self) -> list[str]:
        """The name of every event, in order."""
        return [str(event.get("event")) for event in self._current()]

    def _find(
        self, name: str, params: Any, fields: Mapping[str, Any]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Any, dict[str, Any]]:
        schema = self._sent_schema()
        want_params = _UNSET if params is _UNSET else _as_sent(schema, params)
        want = {key: _field_as_sent(schema, key, value) for key, value in fields.items()}
        events = self._current()
        found = [event for event in events if _matches(event, name, want_params, want)]
        return events, found, want_params, want

    def _failure(
        self, what: str, events: list[dict[str, Any]], params: Any, fields: Mapping[str, Any]
    ) -> AssertionError:
        """What was wanted, and every event there (the first 20), and what the handler refused."""
        wanted = [f"{key}={value!r}" for key, value in fields.items()]
        if params is not _UNSET:
            wanted.append(f"params containing {params!r}")
        head = f"{what} with {', '.join(wanted)}" if wanted else what
        lines = [f"{head}; {_plural(len(events), 'event')} in all:"]
        lines += ["  " + _described(event, list(fields)) for event in events[:20]]
        if len(events) > 20:
            lines.append(f"  ... and {len(events) - 20} more")
        problems = self._problems()
        if problems:
            lines.append("refused by the handler (not queued):")
            lines += ["  " + problem for problem in problems[:20]]
        return AssertionError("\n".join(lines))

    def assert_logged(
        self,
        name: str,
        *,
        params: Any = _UNSET,
        count: int | None = None,
        timeout: float = 0.0,
        **fields: Any,
    ) -> dict[str, Any]:
        """The first event called ``name`` that has these ``params`` and ``fields``.

        ``params``: the event's params hold these names with these values
        (others may be there too), compared as sent: mapped by the handler's
        schema (``{"total": 12}`` matches schema 2's ``"12"``). ``fields``: the
        decoded event's keys, e.g. ``user_id=7`` (schema 2: ``"7"`` matches
        too). ``count``: exactly this many match (1 or more; for none, see
        :meth:`assert_not_logged`). ``timeout``: seconds to wait for the
        events to arrive (a collector). Raises AssertionError listing every
        event there (and what the handler refused).
        """
        __tracebackhide__ = True  # pytest shows the caller's line
        if count is not None and count < 1:
            raise ValueError(f"count must be 1 or more (see assert_not_logged), got {count}")
        deadline = time.monotonic() + timeout
        while True:
            events, found, want_params, want = self._find(name, params, fields)
            if len(found) >= (count or 1) or time.monotonic() >= deadline:
                break
            self._wait_for_more(len(events), deadline)
        if not found or (count is not None and len(found) != count):
            what = f"no event {name!r}"
            if count is not None:
                what = f"expected {_plural(count, 'event')} {name!r}, found {len(found)}"
            raise self._failure(what, events, want_params, want)
        return found[0]

    def assert_not_logged(self, name: str, *, params: Any = _UNSET, **fields: Any) -> None:
        """Raise AssertionError if an event ``name`` with these params and fields is there."""
        __tracebackhide__ = True
        events, found, want_params, want = self._find(name, params, fields)
        if found:
            what = f"{_plural(len(found), 'unexpected event')} {name!r}"
            raise self._failure(what, events, want_params, want)


class EventCapture(_Assertions, Sequence[dict[str, Any]]):
    """The events an application's logging would send, captured with no network and no folder left.

    ``handler_class``: the application's handler class (a subclass of
    ``HamustroHandler`` that overrides ``map_record``, say); ``options``: its
    options as the application gives them (``schema``, ``event_key``,
    ``tenant_id``...). Those left out come from their ``HAMUSTRO_*``
    variable as in the handler, else :data:`CAPTURE_DEFAULTS`; schema 2's
    ``env`` defaults to ``TESTING``. ``queue_dir`` and ``sender`` are the
    capture's own. ``logger``: where to attach (default: the root logger).

    A sequence of dicts, one per event in the order the store numbered
    them, as ``hamustro-logging export`` prints them plus ``params``, the
    decoded params. ``errors`` lists the records the handler refused (a bad
    field), with the handler's one-line reason. Used from one thread.
    """

    def __init__(
        self,
        handler_class: type[HamustroHandler] = HamustroHandler,
        *,
        logger: logging.Logger | str | None = None,
        **options: Any,
    ) -> None:
        for own in ("queue_dir", "sender"):
            if own in options:
                raise ValueError(f"EventCapture sets {own} itself; leave it out")
        self._handler_class = handler_class
        self._logger = logger if isinstance(logger, logging.Logger) else logging.getLogger(logger)
        self._options = options
        self._handler: HamustroHandler | None = None
        self._folder: str | None = None
        self._queue: Queue | None = None
        self._spool: Spool | None = None
        self._events: list[dict[str, Any]] = []
        self._stale = True
        self._cleared: set[tuple[str, int]] = set()
        self._levels: list[tuple[logging.Logger, int]] = []
        #: One line per record the handler refused, as it says them on stderr.
        self.errors: list[str] = []

    # -- life cycle ------------------------------------------------------------------

    def _handler_options(self) -> dict[str, Any]:
        options = dict(self._options)
        for name, value in CAPTURE_DEFAULTS.items():
            if options.get(name) is None and not _environ(name):
                options[name] = value
        schema = resolve(options, {"schema": TRACKER_OPTIONS["schema"]})["schema"]
        if str(schema).strip() == "2" and options.get("env") is None and not _environ("env"):
            options["env"] = _TESTING_ENV
        return options

    def start(self) -> EventCapture:
        """Make the folder and the handler, and attach it; returns self."""
        if self._handler is not None:
            return self
        folder = tempfile.mkdtemp(prefix="hamustro-capture-")
        handler: HamustroHandler | None = None
        try:
            handler = self._handler_class(
                **self._handler_options(), queue_dir=folder, sender="agent"
            )
            self._queue = Queue(folder)
            self._spool = Spool(folder, self._store, self._notice)
        except BaseException:
            if handler is not None:
                handler.close()
            if self._queue is not None:
                self._queue.close()
                self._queue = None
            shutil.rmtree(folder, ignore_errors=True)
            raise
        refuse = handler.handleError

        def handle_error(record: logging.LogRecord) -> None:
            exc = sys.exc_info()[1]
            what = "unknown error" if exc is None else describe(exc).removeprefix("EventError: ")
            self.errors.append(f"event from logger {record.name!r} not queued: {what}")
            refuse(record)

        # The handler's own handleError still runs (its count, its line on stderr).
        handler.handleError = handle_error  # type: ignore[method-assign]
        self._folder, self._handler = folder, handler
        self._logger.addHandler(handler)
        return self

    def stop(self) -> None:
        """Detach and close the handler, put levels back, remove the folder; idempotent."""
        handler, self._handler = self._handler, None
        if handler is None:
            return
        self._logger.removeHandler(handler)
        for logger, level in reversed(self._levels):
            logger.setLevel(level)
        self._levels.clear()
        try:
            handler.close()
        finally:
            if self._spool is not None:
                self._spool.close()
            if self._queue is not None:
                self._queue.close()
            if self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> EventCapture:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what was captured -----------------------------------------------------------

    @property
    def handler(self) -> HamustroHandler:
        """The capture's handler: to attach it to another logger too, or ``tracker.set_user``."""
        if self._handler is None:
            raise RuntimeError("the capture is not running (start() it, or use it in a with)")
        return self._handler

    @property
    def schema(self) -> int:
        """The handler's schema: 1 or 2."""
        return self.handler.schema

    def _sent_schema(self) -> int:
        return self.schema

    def _store(self) -> Queue:
        if self._queue is None:
            raise RuntimeError("the capture is not running")
        return self._queue

    def _notice(self, line: str) -> None:
        print(f"hamustro-logging: {line}", file=sys.stderr)

    def _current(self) -> list[dict[str, Any]]:
        self.handler  # noqa: B018 -- raises if not running
        assert self._spool is not None and self._folder is not None
        if self._spool.move_others().events or self._stale:
            with QueueReader(self._folder) as reader:
                self._events = [event_record(*stored) for stored in reader.iter_events()]
            for event in self._events:
                event["params"] = _decoded(event["parameters"])
            self._stale = False
        return [e for e in self._events if (e["session"], e["nr"]) not in self._cleared]

    def _problems(self) -> list[str]:
        return self.errors

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event captured so far (a new list)."""
        return self._current()

    def clear(self) -> None:
        """Forget the events and errors captured so far."""
        self._cleared.update((e["session"], e["nr"]) for e in self._current())
        self.errors.clear()

    def assert_no_errors(self) -> None:
        """Raise AssertionError if the handler refused a record (a bad field)."""
        __tracebackhide__ = True
        if self.errors:
            raise AssertionError("the handler refused records:\n  " + "\n  ".join(self.errors))

    def set_level(self, level: int | str, logger: str | None = None) -> None:
        """Set a logger's level (the root's by default) for as long as the capture runs.

        Only records at the loggers' effective level reach any handler: set
        the level the application sets (an event logged at INFO under a
        root at WARNING is not sent in production either).
        """
        target = logging.getLogger(logger)
        self._levels.append((target, target.level))
        target.setLevel(level)

    def __len__(self) -> int:
        return len(self._current())

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        return self._current()[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._current())

    def __repr__(self) -> str:
        if self._handler is None:
            return "<EventCapture (not running)>"
        return f"<EventCapture {self.names()!r}>"


def _environ(option: str) -> bool:
    """Whether the option's ``HAMUSTRO_*`` variable is set (the handler would read it)."""
    return bool(os.environ.get(env_name(option)))


class LoopbackCollector(_Assertions, DevCollector):
    """The development collector on 127.0.0.1, for end-to-end tests of an application's events.

    ``url``, ``secret`` and ``schema`` say where and how to send;
    :meth:`handler_options` gives a handler's options for it (a fresh
    temporary queue folder each, removed by :meth:`stop`). ``events()``,
    ``wait_for(n)`` and the fault injection are the development
    collector's; ``assert_logged(..., timeout=10)`` waits for the event.
    Events it accepted are recorded as the real collector stores them.
    """

    def __init__(self, *, schema: int = 1, secret: str = _SECRET, **options: Any) -> None:
        options.setdefault("output", io.StringIO())
        super().__init__("127.0.0.1", 0, secret, schema=schema, **options)
        self.secret = secret
        self.schema = schema
        self._folders: list[str] = []

    def handler_options(self, **overrides: Any) -> dict[str, Any]:
        """Options for a ``HamustroHandler`` (or ``ClientTracker``) that sends here.

        Each event is sent as soon as it is stored (``queue_size=1``; the
        default sends 20 at a time, or after a day). ``overrides`` win
        (``client_id``, ``queue_size``...). Close the handler before the
        collector stops: its folder goes then.
        """
        folder = tempfile.mkdtemp(prefix="hamustro-e2e-")
        self._folders.append(folder)
        options: dict[str, Any] = {
            **{k: v for k, v in CAPTURE_DEFAULTS.items() if k != "collector_url"},
            "collector_url": self.url,
            "shared_secret_key": self.secret,
            "schema": self.schema,
            "queue_dir": folder,
            # each event is due at once (the spec's trigger is 20 events, or a day)
            "queue_size": 1,
        }
        if self.schema == 2:
            options["env"] = _TESTING_ENV
        options.update(overrides)
        return options

    def stop(self) -> None:
        """Stop serving (see ``DevCollector.stop``) and remove the folders it handed out."""
        try:
            super().stop()
        finally:
            for folder in self._folders:
                shutil.rmtree(folder, ignore_errors=True)
            self._folders.clear()

    def _sent_schema(self) -> int:
        return self.schema

    def _current(self) -> list[dict[str, Any]]:
        return self.events()

    def _wait_for_more(self, seen: int, deadline: float) -> None:
        with contextlib.suppress(AssertionError):  # the time is up: the caller says so
            self.wait_for(seen + 1, timeout=max(0.0, deadline - time.monotonic()))

    def assert_logged(
        self,
        name: str,
        *,
        params: Any = _UNSET,
        count: int | None = None,
        timeout: float = 10.0,
        **fields: Any,
    ) -> dict[str, Any]:
        """As :meth:`EventCapture.assert_logged`, waiting up to ``timeout`` seconds for it."""
        __tracebackhide__ = True
        return super().assert_logged(name, params=params, count=count, timeout=timeout, **fields)


class CollectorFactory:
    """Starts a :class:`LoopbackCollector` per call: ``factory(schema=2)``.

    ``stop_all`` stops every one it started (the ``hamustro_collector``
    fixture calls it when the test ends).
    """

    def __init__(self) -> None:
        self._started: list[LoopbackCollector] = []

    def __call__(
        self, *, schema: int = 1, secret: str = _SECRET, **options: Any
    ) -> LoopbackCollector:
        collector = LoopbackCollector(schema=schema, secret=secret, **options)
        collector.start()
        self._started.append(collector)
        return collector

    def stop_all(self) -> None:
        while self._started:
            self._started.pop().stop()
