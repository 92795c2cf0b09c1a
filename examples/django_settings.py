"""The part of a Django ``settings.py`` that sends tracking events.

Django passes ``LOGGING`` to ``logging.config.dictConfig``; nothing else is
needed. In a view::

    import logging
    log = logging.getLogger(__name__)

    def checkout(request):
        ...
        log.info("order placed", extra={"event": "order_placed",
                                        "user_id": request.user.id,
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
