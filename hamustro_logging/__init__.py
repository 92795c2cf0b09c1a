"""Send tracking events from Python's standard ``logging`` to a Hamustro collector.

>>> import hamustro_logging
>>> sorted(hamustro_logging.__all__)[:3]
['ClientTracker', 'Event', 'EventError']
"""

from ._version import __version__
from .contextfields import context, current_context
from .handler import HamustroHandler
from .mapping import (
    EventError,
    build_event,
    build_event_v2,
    extra_attributes,
    map_record,
    map_record_v2,
)
from .tracker import ClientTracker, default_queue_dir
from .wire import Event

__all__ = [
    "ClientTracker",
    "Event",
    "EventError",
    "HamustroHandler",
    "__version__",
    "build_event",
    "build_event_v2",
    "context",
    "current_context",
    "default_queue_dir",
    "extra_attributes",
    "map_record",
    "map_record_v2",
]
