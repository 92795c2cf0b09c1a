"""Celery: the handler in the worker's main process, a context per task. ``pip install celery``.

    HAMUSTRO_COLLECTOR_URL=http://127.0.0.1:8080 HAMUSTRO_SHARED_SECRET_KEY=dev-secret \\
        celery -A examples.celery_app worker --max-tasks-per-child 100

(with ``python -m hamustro_logging.collector`` and a broker running).

* The handler is configured in a receiver of ``setup_logging``: it runs
  once, in the worker's main process, before the prefork pool forks its
  processes, and replaces Celery's own logging setup. The pool processes
  inherit the handler: each writes a journal of its own and starts no
  thread; the main process moves and sends their events, and adopts the
  journal of a pool process that ended (recycled by
  ``--max-tasks-per-child``, or killed). Do not add a handler again in
  ``worker_process_init``: a pool process would then have two, and send
  each event twice.
* ``hamustro_celery.connect`` runs every task inside
  ``hamustro_logging.context(...)``: here the task's ``user_id`` keyword
  and the task's name, merged into each event's params.
* A warm shutdown (SIGTERM, Ctrl-C once) lets running tasks end; the main
  process then closes the handler (``logging.shutdown()`` at exit), which
  sends what is queued within ``close_timeout``; what it could not send
  waits in the queue folder for the next start.
"""

from __future__ import annotations

import logging
import logging.config
import os
from collections.abc import Mapping
from typing import Any

from celery import Celery, signals

from hamustro_logging.integrations import celery as hamustro_celery

app = Celery("shop", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"))

LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "console": {"class": "logging.StreamHandler", "level": "WARNING"},
        "hamustro": {
            "class": "hamustro_logging.HamustroHandler",
            # HAMUSTRO_COLLECTOR_URL and HAMUSTRO_SHARED_SECRET_KEY come from the environment.
            "client_id": "shop-worker",
            "product_version": "2.4.0",
        },
    },
    "root": {"level": "INFO", "handlers": ["console", "hamustro"]},
}


def setup_logging(**kwargs: Any) -> None:
    """The worker's logging: in its main process, before the pool processes are forked."""
    logging.config.dictConfig(LOGGING)


signals.setup_logging.connect(setup_logging)


def task_fields(task: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Mapping[str, Any]:
    """The context of a task: its user (a keyword of every task here) and its name."""
    return {"user_id": kwargs.get("user_id"), "params": {"task": task.name}}


hamustro_celery.connect(task_fields)

log = logging.getLogger("shop.tasks")


@app.task  # type: ignore[untyped-decorator]  # celery ships no type information
def send_receipt(order: int, user_id: int | None = None) -> None:
    log.info("receipt sent", extra={"event": "receipt_sent", "params": {"order": order}})
