"""A Flask app that sends an event per order. ``pip install flask`` to run it.

    HAMUSTRO_COLLECTOR_URL=http://127.0.0.1:8080 HAMUSTRO_SHARED_SECRET_KEY=dev-secret \\
        flask --app examples/flask_app.py run

(with ``python -m hamustro_logging.collector`` running), or under gunicorn
with ``examples/gunicorn_conf.py``. The collector URL and the secret come
from the environment, never from code.
"""

from __future__ import annotations

import logging
import logging.config

from flask import Flask, request

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


def place_order() -> dict[str, object]:
    order = request.get_json(force=True)
    log.info(
        "order placed",
        extra={"event": "order_placed", "user_id": int(order.get("user_id", 0)),
               "params": {"total": order.get("total")}},
    )  # fmt: skip
    return {"ok": True}


app.add_url_rule("/orders", view_func=place_order, methods=["POST"])
