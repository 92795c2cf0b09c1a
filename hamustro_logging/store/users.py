"""The signed-in user of each client (schema 2's ``SetUser`` / ``LoadUser``), kept for later runs.

Who calls what: ``Queue.set_user`` and ``Queue.load_user``, called by
``ClientTracker.set_user`` (the application's thread) and when the tracker
opens the queue.
"""

from __future__ import annotations

import json

from .db import Db
from .errors import QueueCorrupt

__all__ = ["load_user", "set_user"]


def set_user(db: Db, client_id: str, tenant_id: str | None, user_id: str | None) -> None:
    """Remember the signed-in user of ``client_id`` (None: signed out), for later runs too."""
    with db.transaction():
        if tenant_id is None and user_id is None:
            db.cache.delete(f"u/{client_id}")
        else:
            value = json.dumps({"tenant_id": tenant_id, "user_id": user_id})
            db.cache.set(f"u/{client_id}", value)


def load_user(db: Db, client_id: str) -> tuple[str | None, str | None]:
    """(tenant_id, user_id) stored by :func:`set_user`; (None, None) if none (or unreadable)."""
    try:
        doc = json.loads(db.cache.get(f"u/{client_id}") or "{}")
    except (QueueCorrupt, TypeError, ValueError):
        return None, None
    if not isinstance(doc, dict):
        return None, None
    tenant, user = doc.get("tenant_id"), doc.get("user_id")
    return (
        tenant if isinstance(tenant, str) else None,
        user if isinstance(user, str) else None,
    )
