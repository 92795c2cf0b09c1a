"""Small adapters that set :func:`hamustro_logging.context` per request or task.

Each module adapts one framework and imports it only when used, so the
package imports without any of them:

* :mod:`hamustro_logging.integrations.asgi`: an ASGI middleware (Starlette,
  FastAPI, any ASGI app);
* :mod:`hamustro_logging.integrations.django`: a Django middleware, the
  signed-in user by default;
* :mod:`hamustro_logging.integrations.flask`: ``before_request`` and
  ``teardown_request`` functions for a Flask app;
* :mod:`hamustro_logging.integrations.celery`: ``task_prerun`` and
  ``task_postrun`` receivers for Celery tasks.

The app says which fields a request or a task has with a function of its
own. When that function raises (or returns a name that is not a field), the
request or task runs without a context and one line says why on stderr:
tracking never breaks the app.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..contextfields import context
from ..mapping import describe
from ..report import Reporter

__all__ = ["ContextMaker"]


class ContextMaker:
    """Calls the app's ``fields`` function and makes the :class:`~hamustro_logging.context`.

    ``fields`` returns a mapping of context fields, or None (or an empty
    mapping) for no context. Called on the thread (or in the task) that
    serves the request.
    """

    def __init__(
        self, fields: Callable[..., Mapping[str, Any] | None], where: str, what: str
    ) -> None:
        if not callable(fields):
            raise TypeError(f"{where}: fields must be callable, got {type(fields).__name__}")
        self.fields = fields
        self.where = where
        self.what = what  # "request", "task": said in the line on stderr
        self.reporter = Reporter()

    def __call__(self, *args: Any) -> context | None:
        """The context for these arguments, or None (nothing to add, or ``fields`` failed)."""
        try:
            given = self.fields(*args)
            return context(**given) if given else None
        except Exception as exc:
            self.reporter.once(
                f"{self.where}: this {self.what} runs without a context: {describe(exc)}"
            )
            return None
