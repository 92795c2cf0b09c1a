"""An ASGI middleware that runs each request inside a :func:`hamustro_logging.context`.

Plain ASGI, no import of any framework: it wraps a Starlette or FastAPI app
(``app.add_middleware(ContextMiddleware, fields=...)``) or any ASGI app.
``fields(scope)`` says which fields the request has, from what the scope
holds when the request reaches this middleware: its headers, or the user an
authentication middleware added before it (Starlette's
``AuthenticationMiddleware`` puts it in ``scope["user"]``, an app's own may
use ``scope["state"]``, which is ``request.state``).

Everything the app runs for the request runs inside the context: ``async``
endpoints, ``def`` endpoints (Starlette runs them on a thread with a copy of
the context), and background tasks run after the response. Lifespan events
do not.

>>> async def app(scope, receive, send): ...
>>> def user_from_header(scope):
...     user = dict(scope["headers"]).get(b"x-user-id")
...     return {"user_id": int(user)} if user else None
>>> wrapped = ContextMiddleware(app, fields=user_from_header)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from . import ContextMaker

__all__ = ["ContextMiddleware"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ContextMiddleware:
    """Run each HTTP request and WebSocket session of ``app`` inside ``context(**fields(scope))``.

    ``fields(scope)`` returns the context's fields, or None for none. It runs
    in the event loop for each request, so it must not block. When it
    raises, the request runs without a context and one line on stderr says
    why: tracking never breaks the app.
    """

    def __init__(self, app: ASGIApp, fields: Callable[[Scope], Mapping[str, Any] | None]) -> None:
        self.app = app
        self._make = ContextMaker(fields, "hamustro_logging ContextMiddleware (ASGI)", "request")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):  # lifespan: no request, no context
            await self.app(scope, receive, send)
            return
        fields = self._make(scope)
        if fields is None:
            await self.app(scope, receive, send)
            return
        with fields:
            await self.app(scope, receive, send)
