"""A Flask app that sends an event per order, with the signed-in user. ``pip install flask``.

    HAMUSTRO_COLLECTOR_URL=http://127.0.0.1:8080 HAMUSTRO_SHARED_SECRET_KEY=dev-secret \\
        flask --app examples/flask_app.py run

(with ``python -m hamustro_logging.collector`` running), or under gunicorn
with ``examples/gunicorn_conf.py``. The collector URL and the secret come
from the environment, never from code.

``hamustro_flask.init_app`` runs each request inside
``hamustro_logging.context(user_id=...)``: the view logs its event without
naming the user. Here the user is signed in from an ``X-User-Id`` header
(a stand-in for the app's own sign-in, which sets ``g.user``; with
flask-login, read ``current_user`` instead).
"""

from __future__ import annotations

import logging
import logging.config
from collections.abc import Mapping
from typing import Any

from flask import Flask, g, request

from hamustro_logging.integrations import flask as hamustro_flask

logging.config.dictConfig({
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "console": {"class": "logging.StreamHandler"},
        "hamustro": {"class": "hamustro_logging.HamustroHandler",
                     "client_id": "shop", "product_version": "2.4.0", "queue_retention": 1},
    },
    "root": {"level": "INFO", "handlers": ["console", "hamustro"]},
})  # fmt: skip
log = logging.getLogger("shop")
app = Flask(__name__)


@app.before_request
def sign_in() -> None:
    """The app's own sign-in (a stand-in): ``g.user`` for a request that has one."""
    user = request.headers.get("X-User-Id")
    g.user = {"id": int(user)} if user else None


def user_fields() -> Mapping[str, Any] | None:
    """The request's context: the signed-in user, if any."""
    return {"user_id": g.user["id"]} if g.user else None


# after sign_in: a before_request function runs in the order it was added
hamustro_flask.init_app(app, user_fields)


def place_order() -> dict[str, object]:
    order = request.get_json(force=True)
    log.info("order placed", extra={"event": "order_placed", "params": {"total": order["total"]}})
    return {"ok": True}


app.add_url_rule("/orders", view_func=place_order, methods=["POST"])
