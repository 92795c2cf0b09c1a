"""What every ``hamustro-logging`` command shares: options, the folder, output, exit codes.

* Options: the tracker's settings as ``--flags`` that fall back to their
  ``HAMUSTRO_*`` variables (``_SETTINGS``, ``_FLUSH_SETTINGS``,
  ``_config``), the checks of the collector URL and the headers (whose
  secret parts are never shown), ``--timeout``, and which queue folder
  (``--queue-dir`` or ``--client-id``: ``_queue_dir``).
* The folder: opened read-only (``_read_queue``: a
  :class:`~hamustro_logging.reader.QueueReader`, which writes nothing) or
  to change it (``_open_queue``, once ``_refuse_foreign`` saw a hamustro
  queue); a folder that is missing is never created, and errors reading
  it become :class:`Failure`.
* Output and exit codes: :class:`UsageError` (exit 2) and :class:`Failure`
  (exit 1), which :func:`hamustro_logging.cli.main` turns into one line on
  stderr (``_error``, prefixed ``PREFIX``); ``_shown_url`` hides a
  password in a URL; ``_plural``; every parser's ``_EPILOG``.

Who calls what: the command modules (``status``, ``flush``...), from their
``add_parser`` and ``run``, and :mod:`hamustro_logging.cli` itself, all on
the main thread.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import diskcache
import diskcache.core

from ..journal import unmoved_events
from ..queue import Queue, QueueCorrupt
from ..reader import NotAQueue, QueueReader, check_is_queue
from ..tracker import default_queue_dir
from ..transport import check_headers

PROG = "hamustro-logging"
PREFIX = f"{PROG}: "

#: Errors reading a queue folder: permissions, a locked or damaged database.
_QUEUE_ERRORS = (OSError, sqlite3.Error, QueueCorrupt, diskcache.Timeout)


class UsageError(Exception):
    """A usage or configuration error: one line on stderr, exit code 2."""


class Failure(Exception):
    """The operation failed: one line on stderr, exit code 1."""


# -- configuration ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Setting:
    """One tracker option: its ``--flag``, its environment variable, whether required."""

    name: str
    required: bool
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "HAMUSTRO_" + self.name.upper()


_SETTINGS = (
    _Setting("collector_url", True, "the collector's base URL"),
    _Setting(
        "shared_secret_key",
        True,
        "signs each request; prefer the environment variable, an argument shows in `ps`",
    ),
    _Setting(
        "device_id", False, "the raw device id, hashed with SHA-256 (default: this machine's id)"
    ),
    _Setting("client_id", True, "the client id"),
    _Setting(
        "system_version", False, "the system version (default: the platform's, e.g. Linux 6.1)"
    ),
    _Setting("product_version", True, "the product version"),
    _Setting("queue_dir", False, "the queue folder (default: the client_id's default folder)"),
    _Setting("timeout", False, "seconds, or CONNECT,READ seconds (default 3.05,10)"),
    _Setting("schema", False, "the collector's schema: 1 (default) or 2"),
    _Setting("env", False, "schema 2 only, required there: an Environment name or number 0-11"),
    _Setting("device_make", False, "schema 2 only"),
    _Setting("device_model", False, "schema 2 only"),
    _Setting("system_language", False, "schema 2 only (default: the locale's, e.g. en-US)"),
    _Setting("browser", False, "schema 2 only"),
    _Setting("browser_version", False, "schema 2 only"),
    _Setting("product_language", False, "schema 2 only"),
    _Setting(
        "headers",
        False,
        "extra HTTP headers as a JSON object, e.g. for a proxy; "
        "prefer the environment variable, an argument shows in `ps`",
    ),
)


#: What ``flush`` needs: where the folder is, and the collector and key its events
#: are bound to. Each stored session is sent with its own stored header, so
#: none of the collection fields (product_version, schema, env...) is asked for.
_FLUSH_SETTINGS = (
    *(s for s in _SETTINGS if s.name in ("collector_url", "shared_secret_key", "queue_dir")),
    _Setting(
        "client_id", False, "use the default queue folder of this client_id (and collector URL)"
    ),
    *(s for s in _SETTINGS if s.name in ("timeout", "headers")),
)


def _add_config_options(
    parser: argparse.ArgumentParser, settings: tuple[_Setting, ...] = _SETTINGS
) -> None:
    group = parser.add_argument_group(
        "configuration", "Each option defaults to its environment variable, shown in brackets."
    )
    for setting in settings:
        group.add_argument(
            setting.flag,
            dest=setting.name,
            metavar=setting.name.upper(),
            help=f"{setting.help} [${setting.env}]",
        )


def _config(args: argparse.Namespace, settings: tuple[_Setting, ...] = _SETTINGS) -> dict[str, str]:
    """Every given setting of ``settings``, from its option or else its environment variable.

    Raises :class:`UsageError` naming each missing required option and its
    variable, or what is wrong with the collector URL or the headers
    (never their secret parts). Variables of other settings are not read.
    """
    values: dict[str, str] = {}
    missing: list[str] = []
    for setting in settings:
        value = getattr(args, setting.name) or os.environ.get(setting.env) or ""
        if value:
            values[setting.name] = value
        elif setting.required:
            missing.append(f"{setting.flag} (or set {setting.env})")
    if missing:
        raise UsageError("missing configuration: " + ", ".join(missing))
    for name, value in values.items():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(f"{name} is not valid Unicode") from None
    _check_url(values["collector_url"])
    try:
        _headers(values)
    except json.JSONDecodeError as exc:  # its message has a position, never the text
        raise UsageError(f"--headers (or HAMUSTRO_HEADERS) is not a JSON object ({exc})") from None
    except (TypeError, ValueError) as exc:  # check_headers never shows a value
        raise UsageError(str(exc)) from None
    return values


def _headers(config: dict[str, str]) -> dict[str, str] | None:
    """The ``--headers`` JSON object, checked (:func:`check_headers`); None if not given."""
    if "headers" not in config:
        return None
    return check_headers(json.loads(config["headers"]))


def _check_url(url: str) -> None:
    """UsageError unless ``url`` is an http(s) URL with a host and a valid port.

    The message never shows a password (see :func:`_shown_url`).
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError as exc:
        raise UsageError(f"collector_url {_shown_url(url)!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UsageError(
            f"collector_url must be an http:// or https:// URL, got {_shown_url(url)!r}"
        )
    if not parts.hostname:
        raise UsageError(f"collector_url {_shown_url(url)!r} has no host name")


def _timeout(config: dict[str, str]) -> tuple[float, float]:
    """The (connect, read) timeout from ``--timeout``.

    >>> _timeout({"timeout": "2"}), _timeout({"timeout": "1,5.5"}), _timeout({})
    ((2.0, 2.0), (1.0, 5.5), (3.05, 10.0))
    """
    text = config.get("timeout")
    if text is None:
        return (3.05, 10.0)
    try:
        parts = [float(part) for part in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or not all(0 < part < float("inf") for part in parts):
        raise UsageError(
            f"--timeout (or HAMUSTRO_TIMEOUT) must be seconds > 0 or CONNECT,READ, got {text!r}"
        )
    return parts[0], parts[1]


def _shown_url(url: str) -> str:
    """``url`` without its ``user:password@`` part, for messages, however malformed.

    >>> _shown_url("https://user:pw@host:8443/x"), _shown_url("ftp://bob:hunter2@host")
    ('https://***@host:8443/x', 'ftp://***@host')
    >>> _shown_url("bob:hunter2@host"), _shown_url("http://h[ost/x")
    ('***@host', 'http://h[ost/x')
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    netloc = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if "@" not in netloc:
        return url
    return f"{scheme}{sep}***@{rest[len(netloc.rsplit('@', 1)[0]) + 1 :]}"


# -- the queue folder ------------------------------------------------------------------


def _add_queue_options(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--queue-dir", metavar="DIR", help="the queue folder [$HAMUSTRO_QUEUE_DIR]")
    where.add_argument(
        "--client-id",
        metavar="ID",
        help="use the default queue folder of this client_id [$HAMUSTRO_CLIENT_ID]",
    )


def _queue_dir(
    queue_dir: str | None, client_id: str | None, collector_url: str | None = None
) -> Path:
    """The folder: ``--queue-dir``, ``--client-id``, $HAMUSTRO_QUEUE_DIR, $HAMUSTRO_CLIENT_ID.

    The default folder of a client id also depends on the collector's URL
    (``collector_url`` or $HAMUSTRO_COLLECTOR_URL).
    """
    queue_dir = queue_dir or (None if client_id else os.environ.get("HAMUSTRO_QUEUE_DIR"))
    client_id = client_id or os.environ.get("HAMUSTRO_CLIENT_ID")
    if queue_dir:
        return Path(queue_dir)
    collector_url = collector_url or os.environ.get("HAMUSTRO_COLLECTOR_URL")
    if client_id and collector_url:
        return default_queue_dir(client_id, collector_url)
    if client_id:
        raise UsageError(
            "the default queue folder of a client_id depends on the collector too: "
            "set HAMUSTRO_COLLECTOR_URL, or say --queue-dir DIR"
        )
    raise UsageError(
        "say which queue: --queue-dir DIR or --client-id ID "
        "(or set HAMUSTRO_QUEUE_DIR or HAMUSTRO_CLIENT_ID)"
    )


def _existing_queue(directory: Path) -> Path:
    """``directory`` if it holds a queue; otherwise UsageError (opening one would create it)."""
    if not directory.is_dir():
        raise UsageError(f"no queue folder at {directory} (nothing was created)")
    if not (directory / diskcache.core.DBNAME).is_file():
        journaled = sum(unmoved_events(directory, {}).values())
        if journaled:  # apps wrote events and nothing ever moved them (sender="agent")
            raise UsageError(
                f"{directory} has no store ({diskcache.core.DBNAME}) yet, but its journal holds "
                f"{journaled} events nothing has moved: is a `hamustro-logging agent` running "
                "on it? (`hamustro-logging flush` moves and sends them once)"
            )
        raise UsageError(f"{directory} is not a queue folder: it has no {diskcache.core.DBNAME}")
    return directory


def _refuse_foreign(directory: Path) -> None:
    """UsageError unless ``directory`` holds a hamustro queue; reads only, writes nothing."""
    try:
        check_is_queue(directory)
    except NotAQueue as exc:
        raise UsageError(f"{exc}; nothing was changed") from None
    except _QUEUE_ERRORS as exc:
        raise Failure(f"cannot read the queue in {directory}: {exc}") from None


@contextlib.contextmanager
def _read_queue(directory: Path) -> Iterator[QueueReader]:
    """Open an existing queue folder read-only; errors reading it become :class:`Failure`."""
    _existing_queue(directory)
    try:
        reader = QueueReader(directory)
    except NotAQueue as exc:
        raise UsageError(f"{exc}; nothing was changed") from None
    except _QUEUE_ERRORS as exc:
        raise Failure(f"cannot open the queue in {directory}: {exc}") from None
    try:
        yield reader
    except BrokenPipeError:
        raise  # stdout's reader is gone: not the queue's fault
    except _QUEUE_ERRORS as exc:
        raise Failure(f"cannot read the queue in {directory}: {exc}") from None
    finally:
        reader.close()


@contextlib.contextmanager
def _open_queue(directory: Path, notify: Callable[[str], None] | None = None) -> Iterator[Queue]:
    """Open an existing queue folder to change it; a foreign folder is left untouched.

    ``notify`` gets the queue's notices (a damaged row set aside...).
    """
    _existing_queue(directory)
    _refuse_foreign(directory)
    try:
        queue = Queue(directory, notify=notify)
    except _QUEUE_ERRORS as exc:
        raise Failure(f"cannot open the queue in {directory}: {exc}") from None
    try:
        yield queue
    except BrokenPipeError:
        raise  # stdout's reader is gone: not the queue's fault
    except _QUEUE_ERRORS as exc:
        raise Failure(f"cannot read the queue in {directory}: {exc}") from None
    finally:
        queue.close()


# -- output ------------------------------------------------------------------------------


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _error(message: str) -> None:
    """One line on stderr, prefixed with the command's name (what exit 1 and 2 say)."""
    print(PREFIX + message.replace("\n", " "), file=sys.stderr, flush=True)


#: Every parser's last line.
_EPILOG = "exit codes: 0 success, 1 the operation failed or left something, 2 usage error"

#: ``build_parser``'s ``add(name, summary, description)``: a command's own parser.
AddCommand = Callable[[str, str, str], argparse.ArgumentParser]
