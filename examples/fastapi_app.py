"""A FastAPI app: the handler lives as long as the app, each request has its user.

    pip install fastapi uvicorn
    HAMUSTRO_COLLECTOR_URL=http://127.0.0.1:8080 HAMUSTRO_SHARED_SECRET_KEY=dev-secret \\
        uvicorn examples.fastapi_app:app

(with ``python -m hamustro_logging.collector`` running). The lifespan builds
the handler when the app starts and closes it when the app stops, which
sends what is queued (at most ``close_timeout`` seconds; the rest waits in
the queue folder for the next start). The middleware runs each request
inside ``hamustro_logging.context(user_id=...)``, here from an
``X-User-Id`` header set by the gateway in front of the app; an app that
signs users in with Starlette's ``AuthenticationMiddleware`` reads
``scope["user"]`` instead (add that middleware after this one: the last
added runs first).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import BackgroundTasks, FastAPI

from hamustro_logging import HamustroHandler
from hamustro_logging.integrations.asgi import ContextMiddleware, Scope

log = logging.getLogger("shop")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # HAMUSTRO_COLLECTOR_URL and HAMUSTRO_SHARED_SECRET_KEY come from the environment.
    handler = HamustroHandler(client_id="shop-api", product_version="2.4.0")
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()  # sends what is queued, within close_timeout


def user_of(scope: Scope) -> Mapping[str, Any] | None:
    """The request's context: its user, from the header the gateway sets."""
    user = dict(scope["headers"]).get(b"x-user-id")
    return {"user_id": int(user)} if user else None


app = FastAPI(lifespan=lifespan)
app.add_middleware(ContextMiddleware, fields=user_of)


def send_receipt(order: int) -> None:
    # a background task runs after the response, still inside the request's context
    log.info("receipt sent", extra={"event": "receipt_sent", "params": {"order": order}})


@app.post("/orders/{order}")
async def place_order(order: int, total: int, background: BackgroundTasks) -> dict[str, bool]:
    log.info("order placed", extra={"event": "order_placed", "params": {"total": total}})
    background.add_task(send_receipt, order)
    return {"ok": True}


@app.get("/orders/{order}")
def show_order(order: int) -> dict[str, int]:  # a def endpoint: Starlette runs it on a thread
    log.info("order viewed", extra={"event": "order_viewed", "params": {"order": order}})
    return {"order": order}
