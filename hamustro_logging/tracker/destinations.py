"""Where a tracker's events go: its default queue folder and its destination ids.

A destination id is stored with every group of events in the folder: a
sender sends only the events of its own destinations
(:func:`accepted_destinations`), so two configurations sharing a folder
never send each other's events.

Who calls what: ``ClientTracker.__init__`` (and ``options.settings``, for
the folder), and the CLI, to find a folder and tell its groups apart. Pure
functions: any thread.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from ..transport import _without_userinfo as without_userinfo
from ..transport import track_url
from ..wire import md5hex, sha256hex


def default_queue_dir(client_id: str, collector_url: str) -> Path:
    """``$XDG_CACHE_HOME/hamustro-logging/<client_id>-<hash>`` (``~/.cache`` without it).

    The hash covers the client id and the collector's URL (without any
    password), so a production and a staging app with the same client id on
    one host never share a folder by default.

    >>> default_queue_dir("my app/1", "https://collector.example").name
    'my_app_1-74b2df29'
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", client_id)[:64]
    key = f"{client_id}\n{without_userinfo(track_url(collector_url))}"
    return Path(base) / "hamustro-logging" / f"{safe}-{md5hex(key)[:8]}"


def destination_id(
    collector_url: str, shared_secret_key: str, headers: Mapping[str, str] | None = None
) -> str:
    """Where a queued event goes and who it claims to be, as a one-way hash.

    Everything that decides it: the collector's URL *with* its
    ``user:password@`` part, the key, and the extra ``headers`` (names in
    any case, and their values). Two deployments told apart only by a header
    a proxy reads (``X-Tenant``) or by the user in the URL get two
    destinations, and a sender only sends what was logged for its own. The
    secret parts (the key, the URL's user part, the header values) go in
    only through SHA-256: the id stored with every group reveals none of
    them. Without a user part and headers the id is the one earlier
    versions stored, so their folders keep working.

    >>> a = destination_id("https://c.example", "k", {"X-Tenant": "a"})
    >>> a == destination_id("https://c.example", "k", {"x-tenant": "a"})
    True
    >>> a == destination_id("https://c.example", "k", {"X-Tenant": "b"})
    False
    >>> destination_id("https://u:pw@c.example", "k") == destination_id("https://c.example", "k")
    False
    """
    url = track_url(collector_url)
    netloc = urlsplit(url).netloc
    secret = shared_secret_key
    extras = [f"user:{netloc.rpartition('@')[0]}"] if "@" in netloc else []
    extras += [f"header:{k.lower()}:{v}" for k, v in sorted((headers or {}).items())]
    if extras:
        secret += "\0" + "\0".join(extras)
    return _destination_hash(url, secret)


def _destination_hash(url: str, secret: str) -> str:
    secret_hash = sha256hex("hamustro-logging destination:" + secret)
    return md5hex(f"{without_userinfo(url)}\n{secret_hash}")[:16]


def accepted_destinations(
    collector_url: str, shared_secret_key: str, headers: Mapping[str, str] | None = None
) -> frozenset[str]:
    """The destinations a sender of this configuration sends: its own, and its pre-0.3 form.

    Versions before the user part and the headers were in the destination
    bound events to the URL without its user part and the key only. Those
    events were logged before the upgrade, by whichever configuration of
    that URL and key, and nothing tells them apart any more: any sender of
    that URL and key sends them (as those versions did), so an upgrade
    never leaves them waiting.
    """
    return frozenset(
        {
            destination_id(collector_url, shared_secret_key, headers),
            _destination_hash(track_url(collector_url), shared_secret_key),
        }
    )
