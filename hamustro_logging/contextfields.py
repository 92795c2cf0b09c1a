"""``context()``: event fields for everything logged inside a block, a request or a task.

The fields live in a :class:`contextvars.ContextVar`, so each thread and
each asyncio task sees its own: two requests served at once, by two threads
or two tasks, never see each other's user. The handler reads them in
``emit``, on the thread that logs, through :func:`overlay` (called by
:func:`~hamustro_logging.map_record` and
:func:`~hamustro_logging.map_record_v2`). No threads, no I/O.

>>> import logging
>>> from hamustro_logging import map_record
>>> record = logging.makeLogRecord({"event": "order_placed", "params": {"total": 12}})
>>> with context(user_id=7, params={"plan": "pro"}):
...     event = map_record(record)
>>> event.user_id, event.params
(7, b'{"plan":"pro","total":12}')
>>> map_record(record).user_id is None  # outside the block
True
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, TypeVar

__all__ = ["FIELDS", "context", "current_context", "overlay"]

#: The fields a context may carry: every field the mappings read from a
#: record besides the event's name (schema 1 reads ``user_id``, ``params``,
#: ``is_testing`` and ``ip``; schema 2 all but ``is_testing``). A field the
#: handler's schema does not read is ignored, as the same ``extra`` is.
FIELDS = ("user_id", "tenant_id", "params", "is_testing", "ip", "timezone", "country")

#: The fields in force: None outside every context (the common case, one
#: ``get()`` in ``emit``), else a dict that is never changed once set.
_CURRENT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "hamustro_logging.context", default=None
)

_EMPTY: Mapping[str, Any] = MappingProxyType({})

F = TypeVar("F", bound=Callable[..., Any])


def _merged(outer: dict[str, Any] | None, inner: dict[str, Any]) -> dict[str, Any]:
    """``inner`` over ``outer``; two ``params`` dicts merge key by key (inner wins)."""
    if not outer:
        return inner
    merged = {**outer, **inner}
    params, outer_params = inner.get("params"), outer.get("params")
    if type(params) is dict and type(outer_params) is dict:
        merged["params"] = {**outer_params, **params}
    return merged


class context:  # lower case: used like a function, ``with context(...)``, ``@context(...)``
    """Add fields to every event logged inside a ``with`` block or a decorated function.

    ``context(user_id=7, params={"plan": "pro"})`` takes the fields a record's
    ``extra`` may carry (:data:`FIELDS`); a field given as None is left out.
    A record's own field wins over the context's, the context's over the
    handler's (``tracker.set_user()`` and the ``user_id``/``tenant_id``
    options). Contexts nest: the inner one's fields win, and ``params``
    dicts (the record's too) merge key by key.

    The fields follow the code that runs: each thread and each asyncio task
    has its own (a task started inside the block keeps them; a thread
    started inside does not, unless run with
    :func:`contextvars.copy_context`). As a decorator, on a function or an
    ``async def`` coroutine function, each call runs in a context of its
    own.

    A name that is not a field raises ``TypeError`` here, at once; a value
    is checked when an event is logged, as the same value in ``extra``
    would be: a bad one drops that event, counted and said in one line on
    stderr naming the field, and never raises into the app.

    >>> with context(user_id=7):
    ...     with context(params={"plan": "pro"}):
    ...         dict(current_context())
    {'user_id': 7, 'params': {'plan': 'pro'}}
    >>> context(user=7)
    Traceback (most recent call last):
    ...
    TypeError: context() got an unknown field 'user'; it takes user_id, tenant_id, params, is_testing, ip, timezone, country
    """  # noqa: E501 -- doctest output line

    def __init__(self, **fields: Any) -> None:
        for name in fields:
            if name not in FIELDS:
                raise TypeError(
                    f"context() got an unknown field {name!r}; it takes {', '.join(FIELDS)}"
                )
        given = {k: v for k, v in fields.items() if v is not None}
        if type(given.get("params")) is dict:  # a copy: later changes to the caller's dict unseen
            given["params"] = dict(given["params"])
        self._fields = given
        self._tokens: list[contextvars.Token[dict[str, Any] | None]] = []

    def __enter__(self) -> context:
        self._tokens.append(_CURRENT.set(_merged(_CURRENT.get(), self._fields)))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        _CURRENT.reset(self._tokens.pop())

    def __call__(self, func: F) -> F:
        """Decorate ``func``: each call runs inside a context of these fields."""
        fields = self._fields
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with context(**fields):
                    return await func(*args, **kwargs)

            return run_async  # type: ignore[return-value]  # same signature as func

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            with context(**fields):
                return func(*args, **kwargs)

        return run  # type: ignore[return-value]  # same signature as func

    def __repr__(self) -> str:
        return f"context({', '.join(f'{k}={v!r}' for k, v in self._fields.items())})"


def current_context() -> Mapping[str, Any]:
    """The fields in force here (read-only), for a ``map_record`` override that builds events.

    >>> dict(current_context())
    {}
    """
    fields = _CURRENT.get()
    return _EMPTY if fields is None else MappingProxyType(fields)


def overlay(own: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """The fields an event is built from: ``own`` (the record's) over ``fields`` (a context's).

    A record field that is missing or None takes the context's; two
    ``params`` dicts merge key by key, the record's winning. Only the
    :data:`FIELDS` are read from ``own``, plus whatever the caller reads
    itself (the event's name). Runs on the logging thread, in ``emit``.

    >>> overlay({"user_id": None, "params": {"a": 1}}, {"user_id": 7, "params": {"a": 0, "b": 2}})
    {'user_id': 7, 'params': {'a': 1, 'b': 2}}
    """
    out = dict(fields)
    for name in FIELDS:
        value = own.get(name)
        if value is None:
            if name in own and name not in out:
                out[name] = None  # present, as the record has it (schema 2 refuses is_testing)
            continue
        if name == "params" and type(value) is dict:
            under = out.get("params")
            if type(under) is dict:
                value = {**under, **value}
        out[name] = value
    return out
