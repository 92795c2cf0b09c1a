"""One tracker's way into its folder's store: open it, number events into it, keep its user.

A :class:`TrackerStore` opens the folder's ``Queue`` on first use (or at
once), registers the tracker's collection header, and opens it again when
its folder or database file was removed or replaced, carrying every
number already handed out so that numbering goes on. With schema 2 it also
keeps the tracker's user (``SetUser``) in the store, with a copy in a file
of its own that a handler reads without opening the store.

Who calls what: ``ClientTracker`` makes one in its constructor (and again
in a forked child) and calls :meth:`TrackerStore.current` (for
``ClientTracker.queue``: the send thread through ``Delivery``, the spool
step, ``flush()``, ``stats()``), :meth:`TrackerStore.append` (the thread of
``track_event``) and the user's methods (the application's threads).

Locks: ``lock`` is held while events are appended or the user is written,
so one thread of this tracker writes at a time; ``_open_lock`` while the
queue is opened again, as the spool and send threads may both find it
replaced.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..queue import Appended, Queue, QueueBusy, QueueUnusableHere, sqlite_usable_after_fork
from ..report import Reporter
from ..stats import Stats
from ..wire import md5hex

User = tuple[str | None, str | None]


class TrackerStore:
    """The folder's store as one tracker uses it (see the module's docstring).

    ``numbers`` is the tracker's own record of the last ``nr`` it handed out
    per session: carried into a new database if the folder is deleted or a
    corrupt one is set aside. ``keeps_user``: schema 2, where the store
    keeps the user of ``client_id``.
    """

    def __init__(
        self,
        queue_dir: Path,
        session: str,
        header: bytes,
        destination: str,
        *,
        encode: Callable[[Sequence[Any], int, bytes | None], list[bytes]],
        options: Mapping[str, Any],
        numbers: dict[str, int],
        reporter: Reporter,
        stats: Stats,
        client_id: str,
        keeps_user: bool,
    ) -> None:
        self.queue_dir = queue_dir
        self._session = session
        self._header = header
        self._destination = destination
        self._encode = encode
        self._options = options
        self._numbers = numbers
        self._reporter = reporter
        self._stats = stats
        self._client_id = client_id
        self._keeps_user = keeps_user
        #: The queue as last opened (None until then).
        self.opened: Queue | None = None
        self._hid = ""
        self.lock = threading.Lock()
        self._open_lock = threading.Lock()
        #: (tenant_id, user_id) of ``set_user``: read when the queue opens.
        self.user: User = (None, None)

    def open(self, busy_timeout: float | None = None) -> Queue:
        """Open the folder's queue (numbering goes on after every number handed out).

        ``busy_timeout``: wait at most that long for another process's write
        lock (an emit path must not wait the queue's full timeout).
        """
        queue = Queue(
            self.queue_dir,
            carry_numbers=self._numbers,
            notify=self._reporter.once,
            open_timeout=busy_timeout,
            **self._options,
        )
        self._hid = queue.register_header(
            self._session, self._header, self._destination, busy_timeout=busy_timeout
        )
        if self._keeps_user:
            self.user = queue.load_user(self._client_id)
        self.opened = queue
        return queue

    def current(self, busy_timeout: float | None = None) -> Queue:
        """The queue, opened again if its folder or database file was removed or replaced."""
        if not sqlite_usable_after_fork():
            raise QueueUnusableHere(
                "this process was forked while another thread of its parent was inside the "
                "queue's database (SQLite), so it never opens it; its events go through its "
                "journal, which the parent process (or an agent) moves and sends"
            )
        queue = self.opened
        if queue is not None and not queue.replaced():
            return queue
        with self._open_lock:  # one opener: the spool and send threads may both get here
            queue = self.opened
            if queue is None or queue.replaced():
                if queue is not None:
                    # Every number the store handed out (the spool's too) is carried.
                    for session, last in queue.last_known().items():
                        self._numbers[session] = max(self._numbers.get(session, 0), last)
                    self._reporter.once(
                        f"the queue in {self.queue_dir} was removed or replaced; opening a new "
                        "one (numbering goes on after the numbers already given)"
                    )
                    queue.close()
                queue = self.open(busy_timeout)
        return queue

    def append(
        self,
        events: Sequence[Any],
        default_ip: bytes | None,
        busy_timeout: float | None = None,
    ) -> Appended:
        """Number and store validated events in one transaction (see ``ClientTracker.store``)."""
        if not self.lock.acquire(timeout=-1 if busy_timeout is None else busy_timeout):
            raise QueueBusy(
                f"another thread held the queue in {self.queue_dir} for over {busy_timeout:g} s"
            )
        try:
            queue = self.current(busy_timeout)
            done = queue.append(
                self._session, self._hid, events, default_ip,
                busy_timeout=busy_timeout, encode=self._encode,
            )  # fmt: skip
        finally:
            self.lock.release()
        if done.stored:
            self._numbers[self._session] = done.last_nr
        self._stats.add("queued", done.stored)
        if done.dropped:
            self._stats.drop("queue_full", done.dropped)
            self._reporter.problem(
                "queue_full",
                f"the queue in {self.queue_dir} is full ({queue.max_events} events or "
                f"{queue.max_bytes} bytes unsent); new events are dropped until it drains",
            )
        else:
            self._reporter.recovered("queue_full", "the queue has room again")
        return done

    def close(self) -> None:
        """Close this thread's database connection, if the queue was opened."""
        if self.opened is not None:
            self.opened.close()

    # -- schema 2's user ----------------------------------------------------------

    def set_user(self, tenant: str | None, user: str | None) -> None:
        """Store the user (checked by the caller) in the queue and in the user file."""
        with self.lock:
            self.current().set_user(self._client_id, tenant, user)
            self._write_user_file(tenant, user)
        self.user = (tenant, user)

    def load_user(self) -> User:
        """The user stored in the queue, read again."""
        self.user = self.current().load_user(self._client_id)
        return self.user

    def read_user_file(self) -> None:
        """Take the user from the user file, without opening the store (a lazy opener)."""
        self.user = self._read_user_file()

    def _user_file(self) -> Path:
        # A copy of the stored user in a file of its own, so that a handler
        # knows it from its first event without opening the store.
        return self.queue_dir / f"user-{md5hex(self._client_id)[:16]}.json"

    def _write_user_file(self, tenant: str | None, user: str | None) -> None:
        path = self._user_file()
        temporary = path.with_name(path.name + f".{os.getpid()}.new")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump([tenant, user], f)
            os.replace(temporary, path)
        except OSError as exc:  # the store holds the user all the same
            self._reporter.once(f"could not write {path}: {exc}")

    def _read_user_file(self) -> User:
        try:
            fd = os.open(self._user_file(), os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd) as f:
                tenant, user = json.load(f)
        except (OSError, ValueError, TypeError):
            return (None, None)
        if all(v is None or (isinstance(v, str) and v) for v in (tenant, user)):
            return (tenant, user)
        return (None, None)
