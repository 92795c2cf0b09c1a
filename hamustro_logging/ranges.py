"""What ``flush()`` answers for: the numbers this handler stored, and what became of them.

Who calls what: :meth:`StoredRanges.note` is called by whoever moved this
handler's journal into the store (the spool thread, or a flush on the
caller's thread); :meth:`StoredRanges.all_delivered` by ``flush()`` on the
application's thread. A lock of its own guards the ranges.
"""

from __future__ import annotations

import threading

from .queue import Appended
from .tracker import ClientTracker

__all__ = ["StoredRanges"]

#: The nr ranges kept for ``flush()``'s answer; past this many, neighbours are
#: merged (the answer may then be False for another process's events in
#: between, never wrongly True).
_MAX_RANGES = 256


class StoredRanges:
    """The nr ranges one handler stored and does not yet know delivered."""

    def __init__(self, tracker: ClientTracker) -> None:
        self.tracker = tracker
        self._lock = threading.Lock()
        self._ranges: list[tuple[int, int]] = []
        self._dropped_seen = 0  # stats()'s dropped total at the last answer

    def note(self, done: Appended) -> None:
        """Remember the numbers of events this handler stored."""
        first, last = done.first_nr, done.last_nr
        with self._lock:
            ranges = self._ranges
            if ranges and ranges[-1][1] + 1 == first:
                ranges[-1] = (ranges[-1][0], last)
            else:
                ranges.append((first, last))
            if len(ranges) > _MAX_RANGES:
                # Merge neighbours: covers more numbers, never fewer.
                self._ranges = [
                    (ranges[i][0], ranges[min(i + 1, len(ranges) - 1)][1])
                    for i in range(0, len(ranges), 2)
                ]

    def all_delivered(self) -> bool:
        """True if every event this handler stored was delivered, and none was lost since.

        Ranges still pending stay for the next ``flush()``; ranges with events
        the collector refused or that were set aside as unusable make the
        answer False (said once on stderr, then forgotten: their state is
        final, ``stats()`` counts them); so does an event dropped since the
        last ``flush()`` (``stats()["dropped"]``).
        """
        tracker = self.tracker
        with self._lock:
            mine = list(self._ranges)
        fates = tracker.queue.fates(tracker.session, mine) if mine else []
        settled = {(f.first, f.last) for f in fates if not f.pending}
        lost = sum(f.rejected + f.set_aside for f in fates)
        with self._lock:
            self._ranges = [r for r in self._ranges if r not in settled]
            left = bool(self._ranges)
        dropped = sum(tracker.stats_counters.snapshot()["dropped"].values())
        newly_dropped, self._dropped_seen = dropped - self._dropped_seen, dropped
        if lost or newly_dropped:
            tracker.reporter.once(
                f"flush(): {lost} events this handler stored were refused by the collector or "
                f"set aside, and {newly_dropped} were dropped since the last flush() "
                "(see stats())"
            )
        return not (left or lost or newly_dropped)

    def forget_after_fork(self) -> None:
        """In a forked child: a lock a parent thread held at the fork stays held; a new one."""
        self._lock = threading.Lock()
