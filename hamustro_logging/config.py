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

import json
import locale
import os
import platform
import re
import socket
import uuid
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "REQUIRED",
    "SCHEMAS",
    "check_schema",
    "default_device_id",
    "default_system_language",
    "env_name",
    "resolve",
]

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


#: A language tag as a locale names it: ``en``, ``en_US``, ``pt-BR``, ``zh_Hans_CN``.
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(?:[_-][A-Za-z0-9]{2,8})*")


def default_system_language(environ: Mapping[str, str] | None = None) -> str | None:
    """The process's language as a BCP 47 tag (``en-US``), or None where no locale is set.

    From ``LC_ALL``, ``LC_MESSAGES`` or ``LANG`` (the first one set, as
    POSIX reads them for messages), else ``locale.getlocale()``; the
    encoding and modifier are dropped and ``_`` becomes ``-``. ``C`` and
    ``POSIX`` are no language: None.

    >>> default_system_language({"LANG": "hu_HU.UTF-8"})
    'hu-HU'
    >>> default_system_language({"LC_ALL": "C.UTF-8", "LANG": "en_US.UTF-8"}) is None
    True
    """
    env = os.environ if environ is None else environ
    name = next((env[v] for v in ("LC_ALL", "LC_MESSAGES", "LANG") if env.get(v)), None)
    if name is None:
        try:
            name = locale.getlocale()[0]
        except ValueError:  # a locale Python cannot parse
            name = None
    if not name:
        return None
    name = name.split(".", 1)[0].split("@", 1)[0]
    if name.upper() in ("C", "POSIX") or not _LANGUAGE.fullmatch(name):
        return None
    return name.replace("_", "-")


#: The collector schemas this library speaks: 1 (``pseudo-client``) and 2.
SCHEMAS = (1, 2)


def check_schema(value: object) -> int:
    """The ``schema`` option: 1 or 2 (an int, or its digit as a str from the environment).

    >>> check_schema("2")
    2
    >>> check_schema(3)
    Traceback (most recent call last):
    ...
    ValueError: schema must be 1 or 2, got 3
    """
    if isinstance(value, str) and value.strip() in ("1", "2"):
        return int(value)
    if type(value) is int and value in SCHEMAS:
        return value
    raise ValueError(f"schema must be 1 or 2, got {value!r}")


def _headers(text: str) -> dict[str, str]:
    """``HAMUSTRO_HEADERS``: a JSON object of names to str values (never shown in an error)."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"expected a JSON object of header names to values ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError(
            f"expected a JSON object of header names to values, got a {type(doc).__name__}"
        )
    return doc


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


PARSERS: dict[str, Callable[[str], Any]] = {
    "bool": _bool,
    "verify": _verify,
    "timeout": _timeout,
    "schema": check_schema,
    "headers": _headers,
}

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
