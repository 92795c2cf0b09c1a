"""loguru with HamustroHandler as a sink: bound values become the event's fields."""

from __future__ import annotations

from loguru import logger

from hamustro_logging import HamustroHandler

# HAMUSTRO_COLLECTOR_URL and HAMUSTRO_SHARED_SECRET_KEY come from the environment.
handler = HamustroHandler(client_id="shop", product_version="2.4.0")
logger.add(handler, format="{message}")
logger.bind(event="signup", user_id=3, params={"plan": "pro"}).info("signed up")
logger.info("an ordinary line: not an event")
handler.close()
