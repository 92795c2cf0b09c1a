"""A tracker's options: each one's default and environment variable, and their checks.

:data:`TRACKER_OPTIONS` lists every option; :func:`settings` resolves them
(the argument, else its ``HAMUSTRO_*`` variable, else the default) and
checks them all, in the order the constructor names them, into one
:class:`Settings`. A wrong value raises ``ValueError`` (``TypeError`` for a
wrong type) naming the option, never showing a secret.

Who calls what: ``ClientTracker.__init__`` calls :func:`settings`;
``HamustroHandler`` reads :data:`TRACKER_OPTIONS` and :func:`only_in` to
tell its own options from the tracker's; ``set_user`` checks its values
with :func:`required`. Pure functions: any thread.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..config import (
    REQUIRED,
    Spec,
    check_schema,
    default_device_id,
    default_system,
    default_system_language,
    default_system_version,
    env_name,
    resolve,
)
from ..mapping import DEFAULT_MAX_EVENT_BYTES
from ..transport import check_headers
from ..wire import ENVIRONMENTS, environment, sha256hex
from .destinations import default_queue_dir

#: Every option: its type (for its ``HAMUSTRO_*`` environment variable) and
#: its default. The options table in docs/handler.md lists the same.
TRACKER_OPTIONS: dict[str, Spec] = {
    "collector_url": (str, REQUIRED),
    "shared_secret_key": (str, REQUIRED),
    "device_id": (str, default_device_id),
    "client_id": (str, REQUIRED),
    "system_version": (str, default_system_version),
    "product_version": (str, REQUIRED),
    "system": (str, default_system),
    "product_git_hash": (str, None),
    # 1: the collector of pseudo-client.md; 2: upstream's newest (pseudo-client-v2).
    "schema": ("schema", 1),
    # Schema 2's collection fields (refused with schema 1). env is required
    # with schema 2; system_language defaults to the process's locale there.
    "env": (str, None),
    "device_make": (str, None),
    "device_model": (str, None),
    "system_language": (str, None),
    "browser": (str, None),
    "browser_version": (str, None),
    "product_language": (str, None),
    # Extra HTTP headers on every request (a JSON object in $HAMUSTRO_HEADERS).
    "headers": ("headers", None),
    "queue_size": (int, 20),
    "queue_retention": (float, 1440.0),
    "queue_dir": (str, None),
    "detect_ip": ("bool", True),
    "timeout": ("timeout", (3.05, 10.0)),
    "request_timeout": (float, 30.0),  # connect + upload + wait, in all (Transport.max_duration)
    "verify": ("verify", True),
    # 500 a request: 2,000 measured about 20% faster end to end, but the longer
    # bursts of work on the handler's threads raised the application's emit
    # cost by a third (benchmarks/emit_cost.py, dead_collector.py); emit wins.
    "max_batch_events": (int, 500),
    # 64 KiB a request: under every common proxy body limit (nginx's default
    # is 1 MiB, some API gateways allow 100 KB); a 413 lowers it further.
    "max_batch_bytes": (int, 64 * 1024),
    "max_event_bytes": (int, DEFAULT_MAX_EVENT_BYTES),
    "max_queue_events": (int, 10_000_000),
    "max_queue_bytes": (int, 1 << 30),
    # Never take the last of the disk: below this much free space new events
    # are refused (kept in memory by the handler), so that sending, which
    # needs a little space for leases and deletes and frees the rest, works.
    "min_free_bytes": (int, 64 << 20),
    "backoff_base": (float, 1.0),
    "backoff_cap": (float, 300.0),
}

#: Options of schema 2 only: given with schema 1 they are refused.
SCHEMA2_OPTIONS = (
    "env",
    "device_make",
    "device_model",
    "system_language",
    "browser",
    "browser_version",
    "product_language",
)


def only_in(schema: int, name: str, given: Mapping[str, Any], where: str = "option") -> ValueError:
    """The error for an option of ``schema`` only, given with the other one.

    Says where it came from (an argument or its environment variable) and
    which setting to change.
    """
    source = f"${env_name(name)}" if given.get(name) is None else name
    other = 1 if schema == 2 else 2
    return ValueError(
        f"{source}: the {where} {name} exists only in schema {schema}; this one uses schema "
        f"{other} (schema={other}, or $HAMUSTRO_SCHEMA): set schema={schema} or remove {name}"
    )


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every option of a tracker, resolved and checked (what :func:`settings` returns)."""

    schema: int
    url: str = dataclasses.field(repr=False)  # it may hold a password
    secret: str = dataclasses.field(repr=False)
    device_id: str  # already hashed (SHA-256): the raw id is never kept
    client_id: str
    system_version: str
    product_version: str
    system: str | None
    product_git_hash: str | None
    env: int | None  # the environment's number; None with schema 1
    collection_fields: dict[str, str | None]  # schema 2's optional ones ({} with schema 1)
    headers: dict[str, str] = dataclasses.field(repr=False)  # values are secrets too
    queue_size: int
    queue_retention: float
    max_event_bytes: int
    detect_ip: bool
    verify: bool | str
    queue_dir: Path
    max_batch_events: int
    max_batch_bytes: int
    max_queue_events: int
    max_queue_bytes: int
    min_free_bytes: int
    timeout: tuple[float, float]
    request_timeout: Any  # checked by the Transport
    backoff_base: float
    backoff_cap: float

    def queue_options(self) -> dict[str, Any]:
        """The ``Queue``'s options: its chunks and limits."""
        return {
            "chunk_events": self.max_batch_events,
            # Two chunks make a request: what a claim takes stays near the limit.
            "chunk_bytes": max(1, self.max_batch_bytes // 2),
            "max_events": self.max_queue_events,
            "max_bytes": self.max_queue_bytes,
            "min_free_bytes": self.min_free_bytes,
        }

    def transport_options(self) -> dict[str, Any]:
        """The ``Transport``'s options, but for the URL and the secret."""
        return {
            "timeout": self.timeout,
            "verify": self.verify,
            "headers": self.headers,
            "request_timeout": self.request_timeout,
        }


def settings(given: Mapping[str, Any]) -> Settings:
    """The constructor's arguments (``given``), resolved and checked in the order it names them."""
    o = resolve(given, TRACKER_OPTIONS)
    schema = check_schema(o["schema"])
    if schema == 1:
        for name in SCHEMA2_OPTIONS:
            if o[name] is not None:
                raise only_in(2, name, given)
    url = required("collector_url", o["collector_url"])
    scheme = urlsplit(url).scheme
    if scheme not in ("http", "https"):  # never the URL in the message: it may hold a password
        got = f"scheme {scheme!r}" if scheme else "no scheme"
        raise ValueError(f"collector_url must be an http:// or https:// URL, got {got}")
    secret = required("shared_secret_key", o["shared_secret_key"])
    device_id = sha256hex(required("device_id", o["device_id"]))
    client_id = required("client_id", o["client_id"])
    system_version = required("system_version", o["system_version"])
    product_version = required("product_version", o["product_version"])
    system = optional("system", o["system"])
    product_git_hash = optional("product_git_hash", o["product_git_hash"])
    env: int | None = None
    collection_fields: dict[str, str | None] = {}
    if schema == 2:
        if o["env"] is None:
            raise ValueError(
                f"env is required with schema 2: pass it or set ${env_name('env')} (a name "
                f"such as 'production' or 'beta', or its number 0-{max(ENVIRONMENTS.values())})"
            )
        env = environment(o["env"])
        if o["system_language"] is None:
            o["system_language"] = default_system_language()
        collection_fields = {n: optional(n, o[n]) for n in SCHEMA2_OPTIONS[1:]}
    headers = check_headers(o["headers"])
    queue_size = count("queue_size", o["queue_size"])
    queue_retention = seconds("queue_retention", o["queue_retention"])
    max_event_bytes = count("max_event_bytes", o["max_event_bytes"])
    detect_ip, verify = o["detect_ip"], o["verify"]
    if not isinstance(detect_ip, bool):
        raise TypeError(f"detect_ip must be bool, got {type(detect_ip).__name__}")
    if not isinstance(verify, (bool, str)):
        raise TypeError(f"verify must be bool or a CA bundle path, got {type(verify).__name__}")
    queue_dir = o["queue_dir"]
    return Settings(
        schema=schema,
        url=url,
        secret=secret,
        device_id=device_id,
        client_id=client_id,
        system_version=system_version,
        product_version=product_version,
        system=system,
        product_git_hash=product_git_hash,
        env=env,
        collection_fields=collection_fields,
        headers=headers,
        queue_size=queue_size,
        queue_retention=queue_retention,
        max_event_bytes=max_event_bytes,
        detect_ip=detect_ip,
        verify=verify,
        queue_dir=Path(queue_dir) if queue_dir is not None else default_queue_dir(client_id, url),
        max_batch_events=count("max_batch_events", o["max_batch_events"]),
        max_batch_bytes=count("max_batch_bytes", o["max_batch_bytes"]),
        max_queue_events=count("max_queue_events", o["max_queue_events"]),
        max_queue_bytes=count("max_queue_bytes", o["max_queue_bytes"]),
        min_free_bytes=size("min_free_bytes", o["min_free_bytes"]),
        timeout=timeout_pair(o["timeout"]),
        request_timeout=o["request_timeout"],
        backoff_base=seconds("backoff_base", o["backoff_base"]),
        backoff_cap=seconds("backoff_cap", o["backoff_cap"]),
    )


def required(name: str, value: object) -> str:
    """A required str option: non-empty, valid Unicode."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a non-empty str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must be a non-empty str, got an empty str")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid Unicode") from None
    return value


def optional(name: str, value: object) -> str | None:
    """An optional str option: None, or as :func:`required`."""
    return None if value is None else required(name, value)


def timeout_pair(value: object) -> tuple[float, float]:
    """The ``timeout`` option: seconds, or a (connect, read) pair."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value, value)
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return float(value[0]), float(value[1])
    raise ValueError(f"timeout must be seconds > 0 or a (connect, read) pair, got {value!r}")


def count(name: str, value: object) -> int:
    """An int option >= 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def size(name: str, value: object) -> int:
    """An int option >= 0."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def seconds(name: str, value: object) -> float:
    """A number option >= 0 (not NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not value >= 0:  # also refuses NaN
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)
