"""Run inside the child processes of ``test_children.py``.

Spawned children import this module by name, so what they call lives here
at module level. A forked child inherits the parent's handler; a spawned
one builds its own with :func:`setup` (from JSON, as an app would from its
environment).
"""

from __future__ import annotations

import json
import logging

from hamustro_logging import HamustroHandler

LOGGER = "children"


def setup(options_json: str) -> HamustroHandler:
    """Build a handler from JSON options and put it on the ``children`` logger."""
    handler = HamustroHandler(**json.loads(options_json))
    log = logging.getLogger(LOGGER)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handler


def emit(child: int, n: int) -> int:
    """Log ``n`` events tagged with ``child``; return how many."""
    log = logging.getLogger(LOGGER)
    for i in range(n):
        log.info("e", extra={"event": "child.e", "params": {"child": child, "i": i}})
    return n


def setup_and_emit(options_json: str, child: int, n: int) -> int:
    """A spawned ``Process`` target: configure the handler in the child, then log."""
    setup(options_json)
    return emit(child, n)
