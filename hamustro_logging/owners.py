"""Who holds a lease on a chunk being sent, and whether that holder still runs.

A lease is the value ``token|expiry_ms`` of an ``l/`` row (``store/keys.py``);
the token starts with its owner's id, ``host:pid:start:nonce``. Another
process of the same host (and PID namespace) can tell from the id that the
owner no longer runs and take the lease over at once instead of waiting for
its expiry. No I/O but ``/proc`` reads and ``kill(pid, 0)``; called by the
queue under its transaction.

The same ids name the writers of a group of events (``l/w/`` rows): a group
whose writer still runs is never taken for damage (:func:`writer_alive`).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Container

__all__ = ["lease_held", "new_owner", "owner_gone", "token_owner", "writer_alive"]


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of a process from /proc; None where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), fields[19].decode()
    except (OSError, IndexError, UnicodeDecodeError):
        return None


def _host() -> str:
    """This host, as lease owners name it: its name and PID namespace.

    Containers may share a host name without sharing process ids; a pid is
    only looked up where it means the same process.
    """
    try:
        namespace = os.readlink("/proc/self/ns/pid").replace(":", "")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}@{namespace}"


def new_owner() -> str:
    """A lease owner id: ``host:pid:start:nonce`` (unique to this object in this process).

    The pid and its start time let another process of this host see that the
    owner no longer runs and take its leases over at once.
    """
    pid = os.getpid()
    stat = _proc_stat(pid)
    start = stat[1] if stat else "0"
    return f"{_host()}:{pid}:{start}:{uuid.uuid4().hex[:12]}"


def owner_gone(owner: str) -> bool:
    """True if ``owner`` was a process of this host that no longer runs."""
    try:
        host, pid_text, start, _ = owner.rsplit(":", 3)
        pid = int(pid_text)
    except ValueError:
        return False  # not an id new_owner() made: only its expiry frees it
    if host != _host() or pid == os.getpid() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass  # alive, someone else's
    stat = _proc_stat(pid)
    if stat is None:
        return False
    state, now_start = stat
    return state in ("Z", "X") or (start != "0" and now_start != start)  # a zombie, or pid reused


def token_owner(token: str) -> str:
    return token.rsplit("/", 1)[0]


def lease_held(value: object, now_ms: int, gone: dict[str, bool]) -> bool:
    """Whether a lease row's value (``token|expiry_ms``) still holds its chunk.

    Not when it expired, nor when its owner was a process of this host that
    no longer runs. ``gone`` remembers owners looked at (one look per owner).
    """
    if not isinstance(value, str):
        return False
    token, _, expiry = value.rpartition("|")
    if not expiry.isdigit() or int(expiry) <= now_ms:
        return False
    owner = token_owner(token)
    if owner not in gone:
        gone[owner] = owner_gone(owner)
    return not gone[owner]


def writer_alive(owner: str, open_here: Container[str]) -> bool:
    """Whether the writer ``owner`` (a :func:`new_owner` id) may still write to its group.

    In this process: only while the queue object it names is open
    (``open_here``). In another process of this host: while that process
    runs. On another host, or an id not made by :func:`new_owner`: always
    (nothing here can tell).
    """
    if owner in open_here:
        return True
    try:
        pid = int(owner.rsplit(":", 3)[1])
    except (ValueError, IndexError):
        return True
    if pid == os.getpid() and owner.rsplit(":", 3)[0] == _host():
        return False
    return not owner_gone(owner)
