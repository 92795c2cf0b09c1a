"""A local Hamustro collector for development and tests; not for production.

It answers ``POST /api/v1/track`` exactly as the real collector does, check
by check and in the same order (``docs/protocol.md`` lists them), and prints
every accepted event as one compact JSON line (stdout by default). It speaks one
schema: schema 1 (the default) or, with ``schema=2`` / ``--schema 2``, schema 2
as upstream's newest collector does (protobuf or JSON bodies; events recorded
as that collector stores them: ``env`` by name, the parameters as one JSON
object string). It stores nothing durably, keeps accepted events in memory
for tests and can inject faults (errors, dropped connections, hangs,
slowness) so the client's retry logic can be exercised over real HTTP on
loopback.

From a shell::

    python -m hamustro_logging.collector --port 8080 --secret dev-secret
    python -m hamustro_logging.collector --schema 2

From a test::

    with DevCollector(secret="s") as collector:
        ...  # point a client at collector.url
        events = collector.wait_for(3)

Who calls what, from the top down:

- ``command.py``: the command line (:func:`main`); runs a ``DevCollector``.
- ``server.py``: :class:`DevCollector` and its HTTP server: connections,
  injected faults, recording what was accepted. A connection thread asks the
  schema's checks for the answer.
- ``schema1.py``, ``schema2.py``: each schema's checks in upstream's order,
  and its events as that collector stores them.
- ``checks.py``: what both schemas share: the signature, the answer, the stamps.
"""

from .command import main
from .server import TRACK_PATH, DevCollector

__all__ = ["TRACK_PATH", "DevCollector", "main"]
