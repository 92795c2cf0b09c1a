"""Celery: each task runs inside a :func:`hamustro_logging.context`.

::

    from hamustro_logging.integrations import celery as hamustro_celery

    hamustro_celery.connect(lambda task, args, kwargs: {"user_id": kwargs.get("user_id")})

``connect`` adds receivers of Celery's ``task_prerun`` and ``task_postrun``
signals. Celery sends both in the process and on the thread that runs the
task (a pool process of the prefork pool, a thread of the threads pool),
around the task's body, and ``task_postrun`` however the task ended, so
every event the task logs carries its fields, and no field outlives the
task. Celery is imported only by ``connect``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..contextfields import context
from . import ContextMaker

__all__ = ["connect"]


def connect(
    fields: Callable[[Any, tuple[Any, ...], dict[str, Any]], Mapping[str, Any] | None],
) -> Callable[[], None]:
    """Run every task inside ``context(**fields(task, args, kwargs))``; returns a ``disconnect``.

    ``fields`` gets the task object and the task's positional and keyword
    arguments, and returns the context's fields, or None for none. When it
    raises, the task runs without a context and one line on stderr says
    why. Call it where the worker imports the app (the module that defines
    the Celery app), once.
    """
    from celery import signals

    make = ContextMaker(fields, "hamustro_logging connect (Celery)", "task")
    entered: dict[str, context] = {}  # task id -> its context, between prerun and postrun

    def task_prerun(
        task_id: str | None = None,
        task: Any = None,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        **_: Any,
    ) -> None:
        fields_now = make(task, tuple(args or ()), dict(kwargs or {}))
        if fields_now is not None and task_id is not None:
            fields_now.__enter__()
            entered[task_id] = fields_now

    def task_postrun(task_id: str | None = None, **_: Any) -> None:
        fields_now = entered.pop(task_id, None) if task_id is not None else None
        if fields_now is not None:
            fields_now.__exit__(None, None, None)

    signals.task_prerun.connect(task_prerun, weak=False)
    signals.task_postrun.connect(task_postrun, weak=False)

    def disconnect() -> None:
        signals.task_prerun.disconnect(task_prerun)
        signals.task_postrun.disconnect(task_postrun)

    return disconnect
