"""structlog through its standard-library integration.

structlog's stdlib bridge (``render_to_log_kwargs``) sends the message as the
record's message and every other key as ``extra``. structlog already uses the
key ``event`` for the message, so the handler is told to read the tracking
event from another key with ``event_key="track"``.
"""

from __future__ import annotations

import logging
import logging.config

import structlog

logging.config.dictConfig({
    "version": 1,
    "handlers": {"hamustro": {"class": "hamustro_logging.HamustroHandler",
                              "client_id": "shop", "product_version": "2.4.0",
                              "event_key": "track"}},
    "root": {"level": "INFO", "handlers": ["hamustro"]},
})  # fmt: skip
structlog.configure(
    processors=[structlog.stdlib.add_log_level, structlog.stdlib.render_to_log_kwargs],
    logger_factory=structlog.stdlib.LoggerFactory(),
    wrapper_class=structlog.stdlib.BoundLogger,
)
log = structlog.get_logger("shop").bind(user_id=7)
log.info("order placed", track="order_placed", params={"total": 12})
