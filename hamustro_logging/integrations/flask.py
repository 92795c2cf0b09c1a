"""Flask: each request runs inside a :func:`hamustro_logging.context`.

::

    from flask import Flask, g
    from hamustro_logging.integrations import flask as hamustro_flask

    app = Flask(__name__)
    ...  # the app's own before_request that signs the user in (sets g.user), first
    hamustro_flask.init_app(app, lambda: {"user_id": g.user.id} if g.get("user") else None)

``init_app`` adds a ``before_request`` function that enters the context
(after the app's own ``before_request`` functions registered before it,
which may sign the user in) and a ``teardown_request`` function that
leaves it, however the request ended. Flask is imported only by
``init_app``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from . import ContextMaker

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["init_app"]

#: Where the request's context waits for ``teardown_request``: an attribute of ``flask.g``.
_G_NAME = "_hamustro_logging_context"


def init_app(app: Flask, fields: Callable[[], Mapping[str, Any] | None]) -> None:
    """Run each request of ``app`` inside ``context(**fields())``.

    ``fields()`` runs for each request, in the request (``flask.request``,
    ``flask.g`` and ``flask_login.current_user`` are there), after the
    ``before_request`` functions registered before this call. It returns
    the context's fields, or None for none; when it raises, the request
    runs without a context and one line on stderr says why.
    """
    from flask import g

    make = ContextMaker(fields, "hamustro_logging init_app (Flask)", "request")

    def enter_context() -> None:
        fields_now = make()
        if fields_now is not None:
            fields_now.__enter__()
            setattr(g, _G_NAME, fields_now)

    def leave_context(exc: BaseException | None) -> None:
        entered = g.pop(_G_NAME, None)
        if entered is not None:
            entered.__exit__(None, None, None)

    app.before_request(enter_context)
    app.teardown_request(leave_context)
