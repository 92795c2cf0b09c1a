"""Options from arguments or the environment, and the defaults for servers.

Every constructor argument of ``ClientTracker`` and ``HamustroHandler`` may
come from an environment variable named ``HAMUSTRO_`` + its name in upper
case (``HAMUSTRO_SHARED_SECRET_KEY``...), so a secret need not sit in a
``dictConfig`` literal. An explicit argument (anything but ``None``) wins.

>>> import os
>>> os.environ["HAMUSTRO_QUEUE_SIZE"] = "50"
>>> resolve({"queue_size": None}, {"queue_size": (int, 20)})
{'queue_size': 50}
>>> resolve({"queue_size": 7}, {"queue_size": (int, 20)})
{'queue_size': 7}
>>> del os.environ["HAMUSTRO_QUEUE_SIZE"]
"""

from __future__ import annotations

import os
import platform
import socket
import uuid
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["REQUIRED", "default_device_id", "env_name", "resolve"]

REQUIRED = object()


def env_name(option: str) -> str:
    return "HAMUSTRO_" + option.upper()


def default_device_id() -> str:
    """A stable id of this machine: ``/etc/machine-id`` where there is one.

    Otherwise the host name and the first network card's MAC address. The
    tracker hashes it with SHA-256 before it is stored or sent.
    """
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path, encoding="ascii") as f:
                value = f.read().strip()
        except (OSError, UnicodeDecodeError):
            continue
        if value:
            return value
    return f"{socket.gethostname()}:{uuid.getnode():012x}"


def default_system_version() -> str:
    """``platform.system()`` and ``platform.release()``, e.g. ``Linux 6.1.0``."""
    return f"{platform.system()} {platform.release()}".strip() or "unknown"


def default_system() -> str:
    return platform.system() or "unknown"


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _verify(text: str) -> bool | str:
    try:
        return _bool(text)
    except ValueError:
        return text  # a CA bundle path


def _timeout(text: str) -> float | tuple[float, float]:
    parts = [float(p) for p in text.split(",")]
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise ValueError(f"expected seconds or 'connect,read', got {text!r}")


PARSERS: dict[str, Callable[[str], Any]] = {"bool": _bool, "verify": _verify, "timeout": _timeout}

Spec = tuple[Any, Any]  # (str | int | float | a PARSERS key, default or REQUIRED or a callable)


def resolve(given: Mapping[str, Any], options: Mapping[str, Spec]) -> dict[str, Any]:
    """Each option's value: the argument, else its environment variable, else the default.

    A missing required option, or an environment value that does not
    parse, raises ``ValueError`` naming the option and its variable.
    """
    out: dict[str, Any] = {}
    for name, (kind, default) in options.items():
        value = given.get(name)
        if value is None:
            text = os.environ.get(env_name(name), "")
            if text:
                parse = PARSERS[kind] if isinstance(kind, str) else kind
                try:
                    value = parse(text)
                except ValueError as exc:
                    raise ValueError(f"{name}: cannot use ${env_name(name)}: {exc}") from None
            elif default is REQUIRED:
                raise ValueError(f"{name} is required: pass it or set ${env_name(name)}")
            elif callable(default):
                value = default()
            else:
                value = default
        out[name] = value
    return out
