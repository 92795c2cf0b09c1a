"""A Django middleware that runs each request inside a :func:`hamustro_logging.context`.

Add it to ``MIDDLEWARE`` after Django's ``AuthenticationMiddleware`` (it
reads ``request.user``)::

    MIDDLEWARE = [
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "hamustro_logging.integrations.django.ContextMiddleware",
        ...,
    ]

Every event the view logs then carries the signed-in user's primary key as
``user_id`` (none for an anonymous visitor). For other fields, or a user
other than ``request.user.pk`` (schema 1 takes an int ``user_id``; a UUID
key needs schema 2, or another field), subclass it and override
:meth:`ContextMiddleware.fields`, then name the subclass in ``MIDDLEWARE``.
Nothing of Django is imported here: the middleware is a plain callable, as
Django's middleware protocol asks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from . import ContextMaker

__all__ = ["ContextMiddleware"]


class ContextMiddleware:
    """Django middleware: the view runs inside ``context(**self.fields(request))``.

    Runs on the thread that serves the request. The context ends when the
    view's response is returned, before a streaming response's body is
    produced. When ``fields`` raises, the request runs without a context
    and one line on stderr says why.
    """

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self._make = ContextMaker(
            self.fields, "hamustro_logging ContextMiddleware (Django)", "request"
        )

    def fields(self, request: Any) -> Mapping[str, Any] | None:
        """The context's fields for ``request``; override it to choose others.

        By default, the signed-in user's primary key as ``user_id``; None for
        an anonymous visitor.
        """
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return None
        return {"user_id": user.pk}

    def __call__(self, request: Any) -> Any:
        fields = self._make(request)
        if fields is None:
            return self.get_response(request)
        with fields:
            return self.get_response(request)
