"""Claiming: which chunks a sender takes next, under a lease, with an attempt counted.

How sending is shared out (:meth:`Claims.claim`):

* **Turns.** Each claim starts at the group (session and header) after the
  one this object claimed last, so a group that keeps failing, or a huge
  backlog of one session, never starves the others.
* **Leases.** A claimed chunk gets a lease ``token|expiry`` (``l/``). It is
  free again when it expires or, at once, when its owner is a process of
  this host that no longer runs (:mod:`hamustro_logging.owners`). The owner
  may still settle it after expiry, as long as no one else took it over
  (the token is compared, not the clock: :func:`mine`). Senders bound every
  request well under the lease (``Transport.max_duration``).
* **Attempts.** A claim counts an attempt on each chunk (``m/``) *before*
  the request goes out, so after a crash mid-send the next delivery is known
  to be a possible duplicate. A claim of a chunk that carries an attempt
  already counts its events in the ledger's ``resent`` at once (a process
  that dies mid-send leaves the count behind); an answer that says nothing
  was stored (``retry.possibly_stored``) takes the attempt and that count
  back (:mod:`~hamustro_logging.store.settle`).
* **Without leases.** On a full disk no lease can be written: a sender that
  holds the folder's send lock alone (:mod:`hamustro_logging.sendlock`)
  claims in memory, writing nothing; a claim that writes leases holds it
  shared.

Who calls what: ``Queue.claim``, ``hold_sending`` and ``let_go_sending`` are
called by whoever sends (``Delivery``: the handler's send thread, the agent,
``ClientTracker.flush``, ``hamustro-logging flush``).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Container

from ..owners import lease_held
from ..sendlock import SendLock
from .counts import Books, Counters
from .damage import Damage
from .db import PAGE, Db, now_ms
from .errors import QueueCorrupt
from .groups import Groups
from .keys import chunk_parts, parse_chunk_key
from .records import Batch

__all__ = ["Claims", "mine"]


def mine(db: Db, key: str, token: str, leased: bool = True) -> bool:
    """Whether the chunk is still ours: our lease; for an unleased batch, no lease at all."""
    try:
        value = db.cache.get("l/" + key)
    except QueueCorrupt:
        return False
    if not leased:
        return value is None
    return isinstance(value, str) and value.rpartition("|")[0] == token


class Claims:
    """The claims of one ``Queue``: whose turn it is, and the folder's send lock as it holds it."""

    def __init__(
        self, db: Db, counters: Counters, books: Books, groups: Groups, damage: Damage
    ) -> None:
        self._db = db
        self._counters = counters
        self._books = books
        self._groups = groups
        self._damage = damage
        self.send_lock = SendLock(db.directory)
        self._cursor = "e/"  # claims start after this key: each group takes its turn
        self._foreign: set[tuple[str, str]] = set()  # groups of another destination, reported

    def claim(
        self,
        owner: str,
        lease_seconds: float,
        max_events: int = 500,
        max_bytes: int = 64 * 1024,
        *,
        destination: str | Collection[str] | None = None,
        skip: Container[str] = (),
        exclude: Container[str] = (),
        lease: bool = True,
    ) -> Batch | None:
        """Lease unleased chunks of one group (session and header), up to the limits.

        Groups take turns: the search starts after the group this object
        claimed last and wraps around. Skipped: groups of a session in
        ``skip`` (the caller holds them back), groups logged for another
        ``destination`` (when given: one, or the several a sender accepts;
        groups written before destinations existed go to any sender),
        chunks leased by a live sender, chunk keys in ``exclude`` (sent,
        their delete owed). Returns ``None`` when nothing is left to claim,
        or while another process sends without leases. At least one chunk is
        claimed even if it alone exceeds a limit.

        ``lease=False`` (a full disk: no lease can be written) claims in
        memory, writing nothing (no attempt mark, no ``resent``: settling
        the batch counts them); only while this object holds the folder's
        send lock (``hold_sending``), so no other sender claims the same.
        """
        if not lease and not self.send_lock.held:
            raise RuntimeError("claim(lease=False) without hold_sending()")
        with self.send_lock.shared() as others_lease:
            if not others_lease:
                return None
            return self._claim(
                owner, lease_seconds, max_events, max_bytes, destination, skip, exclude, lease
            )

    def _claim(
        self,
        owner: str,
        lease_seconds: float,
        max_events: int,
        max_bytes: int,
        destination: str | Collection[str] | None,
        skip: Container[str],
        exclude: Container[str],
        lease: bool,
    ) -> Batch | None:
        db = self._db
        token = f"{owner}/{time.time_ns()}"
        now = now_ms()
        gone: dict[str, bool] = {}
        keys: list[str] = []
        data: list[bytes] = []
        count = size = 0
        group: tuple[str, str] | None = None
        header = b""
        destinations = {destination} if isinstance(destination, str) else destination
        with db.transaction():
            cache = db.cache  # read under the gate: a salvage may have replaced it
            self._damage.happened = False
            for lo, hi in ((self._cursor, "e0"), ("e/", self._cursor)):
                done = False
                while not done:
                    page = db.keys_between(lo, hi)
                    if not page:
                        break
                    lo = page[-1]
                    for key in page:
                        parsed = parse_chunk_key(key)
                        if parsed is None:
                            self._damage.set_aside(key, "not a key this library writes")
                            continue
                        session, hid, _, n = parsed
                        if group is not None and (session, hid) != group:
                            done = True
                            break
                        if group is None and not self._claimable(session, hid, destinations, skip):
                            lo = f"e/{session}/{hid}0"  # on to the next group
                            break
                        if key in exclude or not self._lease_free(key, now, gone):
                            continue
                        value = self._damage.chunk(key, n)
                        if value is None:
                            continue
                        if keys and (count + n > max_events or size + len(value) > max_bytes):
                            done = True
                            break
                        if group is None:
                            group, header = (session, hid), self._groups.known[(session, hid)][0]
                        keys.append(key)
                        data.append(value)
                        count += n
                        size += len(value)
                    else:
                        done = len(page) < PAGE
                if group is not None:
                    break
            if self._damage.happened:  # rows were set aside: count what is left
                self._counters.rebuild()
            if group is None:
                return None
            expiry = now + int(lease_seconds * 1000)
            resent = 0
            for key in keys if lease else ():
                cache.set("l/" + key, f"{token}|{expiry}")
                # An attempt, counted before the request goes out; a chunk an
                # earlier request may have stored is a possible duplicate now.
                earlier = db.int_row("m/" + key) or 0
                cache.set("m/" + key, earlier + 1)
                if earlier:
                    resent += chunk_parts(key)[3]
            self._books.book({"resent": resent})
            self._cursor = f"e/{group[0]}/{group[1]}0"
        return Batch(
            group[0], group[1], tuple(keys), header, b"".join(data), count, token,
            tuple(map(len, data)), lease,
        )  # fmt: skip

    def _claimable(
        self, session: str, hid: str, destinations: Container[str] | None, skip: Container[str]
    ) -> bool:
        """Whether a group may be claimed now by a sender for one of ``destinations``."""
        if session in skip:
            return False
        info = self._groups.get(session, hid)
        if info is None:
            return False
        if destinations is None or info[1] is None or info[1] in destinations:
            return True
        if (session, hid) not in self._foreign:
            self._foreign.add((session, hid))
            try:
                rebound = self._db.cache.get(f"d/rebound/{info[1]}") is not None
            except QueueCorrupt:
                rebound = False
            self._db.notify(
                f"the queue in {self._db.directory} also holds events of session {session} logged "
                + (
                    "for a collector or key it was rebound from (an app still running with the "
                    "old configuration?); they wait for a sender configured for it, or for "
                    "`hamustro-logging rebind` again"
                    if rebound
                    else "for another collector or key; they wait for a sender configured for it "
                    "(is queue_dir shared by two configurations?)"
                )
            )
        return False

    def _lease_free(self, key: str, now_ms: int, gone: dict[str, bool]) -> bool:
        try:
            value = self._db.cache.get("l/" + key)
        except QueueCorrupt:
            return True
        return not lease_held(value, now_ms, gone)
