"""The spec's ``ClientTracker``: a session, numbered events on disk, the send triggers.

Who calls what, from the top down:

- ``client.py``: :class:`ClientTracker`, the spec's object (session,
  ``track_event``, ``set_user``, triggers, ``flush``, ``stats``).
- ``store.py``: one tracker's way into its folder's store: opening it (again
  when replaced), numbering events into it, schema 2's user.
- ``events.py``: ``track_event``'s arguments as an event of the tracker's
  schema; the collection header and the payloads' encoder.
- ``options.py``: every option, its default and environment variable, and
  their checks.
- ``destinations.py``: the default queue folder and the destination ids.
"""

from .client import ClientTracker
from .destinations import accepted_destinations, default_queue_dir, destination_id
from .events import TrackedEvent
from .options import SCHEMA2_OPTIONS, TRACKER_OPTIONS
from .options import only_in as only_in  # the handler tells its options from ours with it

__all__ = [
    "SCHEMA2_OPTIONS",
    "TRACKER_OPTIONS",
    "ClientTracker",
    "TrackedEvent",
    "accepted_destinations",
    "default_queue_dir",
    "destination_id",
]
