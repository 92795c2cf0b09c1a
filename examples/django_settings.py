"""The parts of a Django ``settings.py`` that send tracking events.

Django passes ``LOGGING`` to ``logging.config.dictConfig``. The middleware,
after Django's ``AuthenticationMiddleware``, runs each request inside
``hamustro_logging.context(user_id=request.user.pk)`` (no user for an
anonymous visitor), so a view logs its events without naming the user::

    import logging
    log = logging.getLogger(__name__)

    def checkout(request):
        ...
        log.info("order placed", extra={"event": "order_placed",
                                        "params": {"total": str(order.total)}})
"""

from __future__ import annotations

from typing import Any

LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "console": {"class": "logging.StreamHandler"},
        "hamustro": {
            "class": "hamustro_logging.HamustroHandler",
            # HAMUSTRO_COLLECTOR_URL and HAMUSTRO_SHARED_SECRET_KEY come from the environment.
            "client_id": "shop-web",
            "product_version": "2.4.0",
            "queue_retention": 1,
        },
    },
    "root": {"handlers": ["console", "hamustro"], "level": "INFO"},
}

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # after AuthenticationMiddleware: it reads request.user
    "hamustro_logging.integrations.django.ContextMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
