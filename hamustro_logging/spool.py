"""The spool step: journal segments moved into the store, each record exactly once.

Who calls what: one thread at a time per :class:`Spool` (the handler's spool
thread, the agent's loop, or the CLI). :meth:`Spool.move_mine` moves the
segments of this process's own writer (live, or sealed and still held);
:meth:`Spool.move_others` looks at every other segment of the folder:

* a segment whose lock it can take has no writer any more (it ended, was
  killed, closed its handler, or sealed the segment and let go): it is
  *adopted*: moved to its end, then removed with its offset row;
* a live segment whose writer leaves moving to others (an app with
  ``sender="agent"``, or a forked child that must not use SQLite) is moved
  as far as it was written;
* a live segment whose writer's own process moves it is left to that process.

The store records how far each segment was moved in the same transaction
that stores its events (:meth:`~hamustro_logging.queue.Queue.append_journal`),
so movers racing on one segment, or a mover killed half-way, never move a
record twice or skip one. A segment with a damaged record before its end
(not a torn last record: written bytes after it) is renamed ``*.damaged``
and said once; it is never deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from .journal import (
    SUFFIX,
    JournalMeta,
    JournalWriter,
    Segment,
    journal_dir,
    open_segment,
    segment_names,
)
from .queue import Appended, Queue

__all__ = ["Moved", "Spool"]


@dataclass
class Moved:
    """What a pass moved: the events, and what the store did with those of this process."""

    events: int = 0
    mine: list[Appended] = field(default_factory=list)


class Spool:
    """Moves a queue folder's journal segments into its store."""

    def __init__(
        self,
        queue_dir: str | os.PathLike[str],
        queue: Callable[[], Queue],
        notify: Callable[[str], None],
        *,
        batch_events: int = 500,
        writer: JournalWriter | None = None,
    ) -> None:
        self.queue_dir = os.fspath(queue_dir)
        self._queue = queue
        self._notify = notify
        self.batch_events = batch_events
        self.writer = writer
        self._hids: dict[tuple[int, str, bytes, str | None], str] = {}
        self._metas: dict[str, JournalMeta | None] = {}
        self._open: dict[str, Segment] = {}

    # -- this process's own segments --------------------------------------------

    def move_mine(self, busy_timeout: float | None = None) -> Moved:
        """Move what this process's writer wrote; sealed segments moved to their end go."""
        out = Moved()
        writer = self.writer
        if writer is None:
            return out
        for opened in [*writer.held, writer.current]:
            if opened is None:
                continue
            if opened is writer.current and os.fstat(opened.fd).st_nlink == 0:
                # Removed under us (the queue folder was deleted): what it holds
                # is moved into the new store from our map, and the writer
                # starts a segment in the new folder with its next event.
                opened.gone = True
            segment = Segment.of(opened)
            sealed = self._move(segment, writer.meta, busy_timeout, out, mine=True)
            if sealed and opened is not writer.current:
                writer.retire(opened)
                self._queue().finish_journal(segment.name)
        return out

    # -- everybody else's ------------------------------------------------------

    def move_others(self, busy_timeout: float | None = None) -> Moved:
        """Adopt abandoned segments and move live ones left to others (see the module)."""
        out = Moved()
        writer = self.writer
        mine = set()
        if writer is not None:
            mine = {s.name for s in [*writer.held, writer.current] if s is not None}
        names = segment_names(self.queue_dir)
        for name in list(self._open):
            if name not in names:
                self._close(name)
        for name in names:
            if name in mine:
                continue
            try:
                self._other(name, busy_timeout, out)
            except OSError as exc:
                self._close(name)
                self._notify(f"could not move journal segment {name}: {exc}")
        self._sweep_unfinished()
        return out

    def _other(self, name: str, busy_timeout: float | None, out: Moved) -> None:
        segment = self._open.get(name)
        if segment is None or not segment.adopted:
            if segment is not None:  # live when last seen: is its writer gone now?
                self._close(name)
            try:
                segment = open_segment(self.queue_dir, name)
            except ValueError as exc:
                self._set_aside(name, str(exc))
                return
            if segment is None:
                return
            self._open[name] = segment
        if name not in self._metas:
            self._metas[name] = segment.meta()
        meta = self._metas[name]
        if meta is None:
            if segment.adopted:
                self._set_aside(name, "its first record is not a readable meta record")
            return
        if not segment.adopted and meta.moved_by_writer:
            self._close(name)  # its writer's own process moves it
            return
        sealed = self._move(segment, meta, busy_timeout, out, mine=False)
        if segment.adopted:
            end = self._queue().journal_offsets().get(name, (0, 0))[0]
            if not sealed and segment.written_after(end):
                self._set_aside(name, f"a damaged record at byte {end}; what follows is kept")
                return
            self._queue().finish_journal(name)  # first: a racing mover then finds it finished
            segment.remove()
            self._close(name)

    # -- moving ------------------------------------------------------------------

    def _move(
        self,
        segment: Segment,
        meta: JournalMeta,
        busy_timeout: float | None,
        out: Moved,
        *,
        mine: bool,
    ) -> bool:
        """Move the segment as far as it is written; True if its seal was reached."""
        queue = self._queue()
        key = (id(queue), meta.session, meta.header, meta.destination)
        hid = self._hids.get(key)
        if hid is None:
            hid = queue.register_header(
                meta.session, meta.header, meta.destination, busy_timeout=busy_timeout
            )
            self._hids[key] = hid
        batch = self.batch_events
        seen: dict[str, int | bool] = {}
        while True:
            seen.update(start=0, sealed=False)

            def read(offset: int) -> tuple[int, list[bytes]]:
                end, bodies, seen["sealed"] = segment.events(offset, batch)
                seen["start"] = offset
                return end, bodies

            own = segment.own
            known = None if own is None else (own.moved_to, own.moved_events_here)
            done, end, moved = queue.append_journal(
                segment.name, read, meta.session, hid, meta.schema,
                busy_timeout=busy_timeout, known=known,
            )  # fmt: skip
            if end == 0:  # finished by another mover
                return True
            segment.hint(end, moved)
            if own is not None:
                own.moved_to, own.moved_events_here = end, moved
            count = done.stored + done.dropped
            out.events += count
            if mine and count:
                out.mine.append(done)
                if self.writer is not None:
                    self.writer.moved += count
            if seen["sealed"]:
                return True
            if end == seen["start"]:
                return segment.sealed_at(end)

    # -- housekeeping ----------------------------------------------------------

    def _set_aside(self, name: str, why: str) -> None:
        path = os.path.join(journal_dir(self.queue_dir), name)
        self._close(name)
        with contextlib.suppress(OSError):
            os.rename(path, path + ".damaged")
        self._notify(
            f"journal segment {path} set aside as {name}.damaged ({why}); "
            "its events before the damage were moved in"
        )

    def _sweep_unfinished(self) -> None:
        """Remove segments whose writer died while making them (they hold no event)."""
        folder = journal_dir(self.queue_dir)
        try:
            names = [n for n in os.listdir(folder) if n.endswith(SUFFIX + ".new")]
        except OSError:
            return
        for name in names:
            path = os.path.join(folder, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.unlink(path)
            except OSError:
                pass  # being made right now
            finally:
                os.close(fd)

    def _close(self, name: str) -> None:
        segment = self._open.pop(name, None)
        self._metas.pop(name, None)
        if segment is not None:
            segment.close()

    def close(self) -> None:
        for name in list(self._open):
            self._close(name)
