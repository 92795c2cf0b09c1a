"""No message ever holds the shared secret or a ``headers`` value, and none is rewritten.

Messages are not filtered after the fact: the code that makes them never puts
a secret in. So a secret that is an ordinary word leaves every message as it
is, and a secret that is not never shows, on every failure path of the CLI
and of the handler (stdout, stderr, exceptions, reprs, stats).
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hamustro_logging import ClientTracker, HamustroHandler
from hamustro_logging.cli import main
from hamustro_logging.collector import DevCollector

from .support import TEST_SECRET, dead_url, tracker_config

ROOT = Path(__file__).resolve().parents[1]

#: Never to be seen: the shared secret, and a proxy token given in ``headers``.
SECRET = "Zq-s3cr3t-9931"  # noqa: S105 -- a test value, not a credential
TOKEN = "Tk-h3ad3r-5521"  # noqa: S105 -- a test value, not a credential


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("HAMUSTRO_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def run_cli(tmp_path: Path, *args: str, **variables: str) -> str:
    """Everything ``python -m hamustro_logging ARGS`` prints (stdout and stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAMUSTRO_")}
    env.update(PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(tmp_path / "cache"), **variables)
    done = subprocess.run(
        [sys.executable, "-m", "hamustro_logging", *args],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout + done.stderr


def identity(url: str, queue_dir: Path) -> list[str]:
    return [
        "--collector-url", url, "--client-id", "client-1", "--product-version", "1.0.0",
        "--device-id", "device-1", "--queue-dir", str(queue_dir),
    ]  # fmt: skip


def fill(url: str, queue_dir: Path, secret: str = SECRET) -> None:
    with ClientTracker(**tracker_config(url, queue_dir, shared_secret_key=secret)) as tracker:
        tracker.track_event("order_placed", user_id=1)


# -- a secret that is a word -------------------------------------------------------------


@pytest.mark.parametrize("secret", ["wrong", "probably", "secret", "collector"])
def test_a_secret_that_is_an_ordinary_word_leaves_send_test_intact(
    tmp_path: Path,
    collector: DevCollector,
    capsys: pytest.CaptureFixture[str],
    secret: str,
) -> None:
    argv = ["send-test", *identity(collector.url, tmp_path / "q"), "--shared-secret-key", secret]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "405: the collector refused the signature: the secret is probably wrong" in err
    assert "***" not in err


def test_a_secret_that_is_an_ordinary_word_leaves_the_handler_s_lines_intact(
    tmp_path: Path, collector: DevCollector, capsys: pytest.CaptureFixture[str]
) -> None:
    word = "signature"  # a word of the 405 line
    config = tracker_config(collector, tmp_path / "q", shared_secret_key=word)
    handler = HamustroHandler(**config)
    try:
        handler.emit(logging.makeLogRecord({"event": "signup", "msg": "x"}))
        assert handler.flush(timeout=5) is False  # 405: the key is not the collector's
    finally:
        handler.close()
    err = capsys.readouterr().err
    assert "405: the collector refused the signature; check shared_secret_key" in err
    assert "***" not in err


# -- the CLI ---------------------------------------------------------------------------


def cli_cases(
    tmp_path: Path, url: str, dead: str
) -> Iterator[tuple[str, list[str], dict[str, str]]]:
    """(what, argv, environment) for each way a command can fail or succeed."""
    queue_dir = tmp_path / "q"
    key = {"HAMUSTRO_SHARED_SECRET_KEY": SECRET}
    headers = json.dumps({"X-Proxy-Auth": TOKEN})
    flush = ["--queue-dir", str(queue_dir)]
    yield "send-test, key refused", [*identity(url, queue_dir), "--headers", headers], key
    yield "send-test, dead", [*identity(dead, queue_dir), "--shared-secret-key", SECRET], {}
    yield "send-test, ok", ["send-test"], {}  # replaced below: the collector's key
    yield "flush, key refused", ["flush", "--collector-url", url, *flush], key
    yield "flush, dead", ["flush", "--collector-url", dead, "--headers", headers, *flush], key
    yield "flush, no folder", ["flush", "--collector-url", url, "--queue-dir", "nowhere"], key
    yield "rebind", ["rebind", "--collector-url", url, "--shared-secret-key", SECRET, *flush], {}
    for command in ("status", "export", "retry-rejected"):
        yield (
            f"{command}, a key it does not take",
            [command, *flush, f"--shared-secret-key={SECRET}"],
            {},
        )
        yield f"{command}, headers", [command, *flush, "--headers", headers], {}
    for bad in (
        {f"Authorization: Bearer {TOKEN}": "x"},  # a header line given as a name
        {"X-Proxy-Auth": f"\xa0{TOKEN}"},  # a leading no-break space: requests quotes it
        {"X-Proxy-Auth": f"{TOKEN}\r\n"},
        {"X-Proxy-Auth": f"{TOKEN}\u20ac"},  # outside Latin-1
    ):
        for command in ("send-test", "flush"):
            base = identity(url, queue_dir) if command == "send-test" else flush
            yield f"{command}, bad headers", [command, *base, "--collector-url", url], {
                **key, "HAMUSTRO_HEADERS": json.dumps(bad),
            }  # fmt: skip
    yield "send-test, headers not JSON", [*identity(url, queue_dir)], {
        **key, "HAMUSTRO_HEADERS": '{"X-Proxy-Auth": ' + TOKEN + "}",
    }  # fmt: skip


def test_the_cli_never_prints_the_secret_or_a_header_value(
    tmp_path: Path, collector: DevCollector
) -> None:
    fill(collector.url, tmp_path / "q", secret=TEST_SECRET)  # bound to the collector's key
    shown = []
    for what, argv, env in cli_cases(tmp_path, collector.url, dead_url()):
        if what == "send-test, ok":
            argv = ["send-test", *identity(collector.url, tmp_path / "q")]
            env = {"HAMUSTRO_SHARED_SECRET_KEY": TEST_SECRET, "HAMUSTRO_HEADERS": "{}"}
        elif argv[0].startswith("--"):
            argv = ["send-test", *argv]
        said = run_cli(tmp_path, *argv, **env)
        assert SECRET not in said, (what, said)
        assert TOKEN not in said, (what, said)
        shown.append(said)
    everything = "\n".join(shown)
    # The failures were said (not silenced): each case printed something of its own.
    for expected in (
        "the secret is probably wrong",
        "connection refused",
        "not a valid HTTP header name",
        "cannot be sent in an HTTP header",
        "is not a JSON object",
        "unrecognized arguments: --shared-secret-key",
        "now bound to",
    ):
        assert expected in everything, expected


def test_the_cli_blanks_the_url_password(tmp_path: Path) -> None:
    url = dead_url().replace("http://", "http://bob:hunter2@")
    said = run_cli(
        tmp_path, "send-test", *identity(url, tmp_path / "q"), HAMUSTRO_SHARED_SECRET_KEY=SECRET
    )
    assert "***@127.0.0.1:" in said
    assert "hunter2" not in said and SECRET not in said


# -- the handler -----------------------------------------------------------------------


def test_the_handler_never_says_the_secret_or_a_header_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    said: list[str] = []
    refusing = DevCollector(secret=TEST_SECRET, output=io.StringIO())
    with refusing:
        for url, faults in ((refusing.url, None), (dead_url(), None), (refusing.url, 503)):
            queue_dir = tmp_path / f"q{len(said)}"
            config = tracker_config(
                url, queue_dir, shared_secret_key=SECRET, headers={"X-Proxy-Auth": TOKEN}
            )
            if faults is not None:
                refusing.fail_next(5, status=faults)
            handler = HamustroHandler(**config)
            try:
                handler.emit(logging.makeLogRecord({"event": "signup", "msg": "x"}))
                handler.emit(logging.makeLogRecord({"event": "", "msg": "a bad record"}))
                assert handler.flush(timeout=5) is False
                said += [repr(handler), repr(handler.tracker), repr(handler.tracker.transport)]
                said.append(json.dumps(handler.stats(), default=str))
            finally:
                handler.close()
    captured = capsys.readouterr()
    said += [captured.out, captured.err]
    everything = "\n".join(said)
    assert "405: the collector refused the signature" in everything
    assert "connection refused" in everything
    assert SECRET not in everything
    assert TOKEN not in everything


@pytest.mark.parametrize(
    "options",
    [
        {"headers": {"X-Proxy-Auth": f"\xa0{TOKEN}"}},
        {"headers": {"X-Proxy-Auth": f" {TOKEN}"}},
        {"headers": {"X-Proxy-Auth": f"{TOKEN}\n"}},
        {"headers": {f"Authorization: Bearer {TOKEN}": "x"}},
        {"headers": {"Content-Type": TOKEN}},
        {"collector_url": f"ftp://bob:{TOKEN}@127.0.0.1"},
        {"collector_url": f"http://bob:{TOKEN}@[::1"},
        {"timeout": "x"},
        {"shared_secret_key": ""},
    ],
)
def test_a_refused_configuration_never_quotes_the_secret_or_a_header_value(
    tmp_path: Path, options: dict[str, object]
) -> None:
    config = tracker_config("http://127.0.0.1:9", tmp_path / "q", shared_secret_key=SECRET)
    config.update(options)
    for make in (ClientTracker, HamustroHandler):
        with pytest.raises((ValueError, TypeError)) as caught:
            make(**config)
        assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)
        assert TOKEN not in str(caught.value) and TOKEN not in repr(caught.value)


def test_headers_from_the_environment_are_never_quoted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HAMUSTRO_HEADERS", '{"X-Proxy-Auth": ' + TOKEN + "}")
    config = tracker_config("http://127.0.0.1:9", tmp_path / "q", shared_secret_key=SECRET)
    with pytest.raises(ValueError, match=r"cannot use \$HAMUSTRO_HEADERS") as caught:
        HamustroHandler(**config)
    assert TOKEN not in str(caught.value)
