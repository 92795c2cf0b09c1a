"""pytest fixtures for testing an application's events: ``hamustro_events``, ``hamustro_collector``.

pytest loads this module through the package's ``pytest11`` entry point
(``hamustro_logging``), so installing hamustro-logging is all it takes
(``-p no:hamustro_logging`` turns it off). Only pytest imports it: the
package itself never needs pytest. The work is done by
:mod:`hamustro_logging.testing`; this module only ties it to pytest.

Who calls what: pytest calls the fixtures and ``pytest_configure`` on the
test session's thread; a fixture's value is used by its test.

* ``hamustro_events``: an :class:`~hamustro_logging.testing.EventCapture`
  attached to the root logger for the test, configured by the
  ``hamustro_handler_options`` fixture (override it in a ``conftest.py``
  to give the application's options) and then by the test's
  ``@pytest.mark.hamustro(...)`` marker;
* ``hamustro_collector``: a :class:`~hamustro_logging.testing.CollectorFactory`:
  ``hamustro_collector(schema=2)`` starts a loopback collector, stopped
  when the test ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .handler import HamustroHandler
from .testing import CollectorFactory, EventCapture

__all__ = [
    "hamustro_collector",
    "hamustro_events",
    "hamustro_handler_options",
    "pytest_configure",
]


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``hamustro`` marker (so ``--strict-markers`` takes it)."""
    config.addinivalue_line(
        "markers",
        "hamustro(**options): options of the handler behind the hamustro_events fixture "
        "(schema, event_key, tenant_id, handler_class, logger...)",
    )


@pytest.fixture
def hamustro_handler_options() -> dict[str, Any]:
    """The options of the handler behind ``hamustro_events``: none by default.

    Override it in a ``conftest.py`` with the options the application gives
    its handler (``schema``, ``event_key``, ``user_id``...), plus
    ``handler_class`` for the application's own subclass and ``logger`` for
    a logger other than the root. A test's ``@pytest.mark.hamustro(...)``
    marker wins over these.
    """
    return {}


@pytest.fixture
def hamustro_events(
    request: pytest.FixtureRequest, hamustro_handler_options: dict[str, Any]
) -> Iterator[EventCapture]:
    """The events the test's logging would send, mapped as the handler maps them.

    No network, and its temporary queue folder is gone after the test. A
    list of dicts (``hamustro_events[0]["event"]``) with ``named()``,
    ``assert_logged()``, ``assert_not_logged()``, ``errors`` and ``clear()``.
    """
    options = dict(hamustro_handler_options)
    for marker in reversed(list(request.node.iter_markers("hamustro"))):
        if marker.args:
            raise pytest.UsageError("@pytest.mark.hamustro takes options by name only")
        options.update(marker.kwargs)
    handler_class: type[HamustroHandler] = options.pop("handler_class", HamustroHandler)
    logger = options.pop("logger", None)
    with EventCapture(handler_class, logger=logger, **options) as capture:
        yield capture


@pytest.fixture
def hamustro_collector() -> Iterator[CollectorFactory]:
    """Starts loopback development collectors: ``hamustro_collector(schema=2, secret=...)``.

    Each has ``url``, ``secret``, ``handler_options()``, ``events()``,
    ``wait_for(n)`` and ``assert_logged(...)``; all are stopped (and the
    queue folders they handed out removed) when the test ends.
    """
    factory = CollectorFactory()
    try:
        yield factory
    finally:
        factory.stop_all()
