"""The queue folder is a trust boundary (issue 11).

Whoever can write the queue folder can make the application sign and send
anything. So a folder (or database file) another user could change is
refused, with one line that says how to fix it; a link planted in place of
the folder or of a file is refused, never followed; every file the queue
creates is 0600 and every folder 0700; the CLI's readers change nothing,
not even another application's diskcache folder, and work on a read-only
mount; a password in ``collector_url`` is never shown.

The refusals are caught as ``PermissionError`` (``UnsafeQueueFolder`` is
one), so these tests fail for the behaviour, not for an import, on a version
without the checks.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import diskcache
import pytest

from hamustro_logging import ClientTracker, HamustroHandler
from hamustro_logging.collector import DevCollector
from hamustro_logging.queue import Queue

from ..support import TEST_SECRET, dead_url, tracker_config

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="only root can chown a folder to another user")
posix_only = pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX owners and modes")
pytestmark = posix_only


# -- helpers -----------------------------------------------------------------------------


def fill(queue_dir: Path, n: int, **overrides: Any) -> str:
    """Queue ``n`` events (none sent); return their session."""
    config = tracker_config(dead_url(), queue_dir, queue_size=10**6, **overrides)
    with ClientTracker(**config) as tracker:
        for i in range(n):
            tracker.track_event("order_placed", user_id=i, params={"i": i})
        return tracker.session


def refusal(queue_dir: Path) -> str:
    """The message a ClientTracker on ``queue_dir`` is refused with."""
    with pytest.raises(PermissionError) as caught:
        ClientTracker(**tracker_config(dead_url(), queue_dir))
    assert type(caught.value).__name__ == "UnsafeQueueFolder"
    message = str(caught.value)
    assert "\n" not in message
    return message


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every entry under ``folder``: (mode, sha256 of the bytes) -- to compare before and after."""
    out: dict[str, tuple[int, str]] = {".": (os.lstat(folder).st_mode, "")}
    for path in sorted(folder.rglob("*")):
        st = os.lstat(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        out[str(path.relative_to(folder))] = (st.st_mode, digest)
    return out


def modes(folder: Path) -> dict[str, str]:
    """The permission bits of the folder and of everything under it."""
    out = {".": oct(stat.S_IMODE(os.lstat(folder).st_mode))}
    for path in folder.rglob("*"):
        out[str(path.relative_to(folder))] = oct(stat.S_IMODE(os.lstat(path).st_mode))
    return out


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m hamustro_logging ARGS`` as a subprocess, no HAMUSTRO_* from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAMUSTRO_")}
    env["PYTHONPATH"] = str(ROOT)
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    env["HAMUSTRO_SHARED_SECRET_KEY"] = TEST_SECRET
    return subprocess.run(
        [sys.executable, "-m", "hamustro_logging", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )


def one_line(text: str) -> str:
    assert "Traceback" not in text
    assert len(text.strip().splitlines()) == 1, text
    return text.strip()


def foreign_cache(folder: Path) -> None:
    """Another application's diskcache folder, at rest: default settings, its own keys."""
    cache = diskcache.Cache(str(folder))
    cache.set("user:1", {"name": "Ada"})
    cache.set("token", b"\x00" * 100)
    cache.set("big", b"x" * (2 << 20))  # a value file of its own
    cache.close()


@contextlib.contextmanager
def read_only_mount(source: Path, target: Path) -> Iterator[Path]:
    """``source`` bind-mounted read-only on ``target``; skip where mounting is not allowed."""
    target.mkdir()
    if not IS_ROOT or shutil.which("mount") is None:
        pytest.skip("a read-only bind mount needs root and mount(8)")
    done = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"mount --bind is not allowed here: {done.stderr.strip()!r}")
    try:
        remount = ["mount", "-o", "remount,bind,ro", str(target)]
        if subprocess.run(remount, capture_output=True).returncode != 0:
            pytest.skip("a read-only remount is not allowed here")
        with pytest.raises(OSError):
            (target / "probe").write_text("")  # really read-only, root included
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


# -- who may write the folder --------------------------------------------------------------


def test_a_folder_others_can_write_is_refused_with_the_fix(tmp_path: Path) -> None:
    folder = tmp_path / "queue"
    folder.mkdir()
    folder.chmod(0o777)
    message = refusal(folder)
    assert f"queue folder {folder} can be written by group or others (mode 0777)" in message
    assert f"chmod 700 {folder}" in message and "queue_dir" in message
    assert list(folder.iterdir()) == []  # nothing was opened or created in it
    folder.chmod(0o700)  # the fix the message gives works
    ClientTracker(**tracker_config(dead_url(), folder)).close()


def test_a_group_writable_folder_is_refused_too(tmp_path: Path) -> None:
    folder = tmp_path / "queue"
    folder.mkdir()
    folder.chmod(0o770)
    assert "(mode 0770)" in refusal(folder)


@needs_root
def test_a_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "queue"
    folder.mkdir(mode=0o700)
    os.chown(folder, NOBODY, NOBODY)
    message = refusal(folder)
    assert f"belongs to uid {NOBODY}, not to this user (uid 0)" in message
    assert list(folder.iterdir()) == []


@needs_root
def test_a_database_file_of_another_user_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "queue"
    fill(folder, 1)
    os.chown(folder / "cache.db", NOBODY, NOBODY)  # replaced by another user's file
    assert f"queue file {folder / 'cache.db'} belongs to uid {NOBODY}" in refusal(folder)


def test_a_database_file_others_can_write_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "queue"
    fill(folder, 1)
    (folder / "cache.db").chmod(0o666)
    message = refusal(folder)
    assert "can be written by group or others (mode 0666)" in message
    assert f"chmod 600 {folder / 'cache.db'}" in message


def test_a_hard_link_in_place_of_the_database_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "queue"
    fill(folder, 1)
    os.link(folder / "cache.db", tmp_path / "other-name")
    assert "hard links" in refusal(folder)


# -- links planted in place of the folder or a file ----------------------------------------


def test_a_symlink_in_place_of_the_folder_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    real.mkdir(mode=0o700)
    link = tmp_path / "queue"
    link.symlink_to(real)
    for given in (link, Path(f"{link}/")):  # a trailing slash must not make lstat follow it
        assert "is a symbolic link" in refusal(given)
    assert list(real.iterdir()) == []  # never followed


@pytest.mark.parametrize("name", ["cache.db", "cache.db-wal", "cache.db-shm"])
def test_a_symlink_in_place_of_a_database_file_is_refused(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "queue"
    fill(folder, 2)
    planted = tmp_path / "planted.db"
    fill(tmp_path / "attacker", 1)
    shutil.copy(tmp_path / "attacker" / "cache.db", planted)
    before = planted.read_bytes()
    with contextlib.suppress(FileNotFoundError):
        (folder / name).unlink()
    (folder / name).symlink_to(planted)
    assert f"queue file {folder / name} is a symbolic link" in refusal(folder)
    assert planted.read_bytes() == before


def test_a_database_swapped_under_a_running_tracker_is_refused_at_reopen(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "queue"
    fill(tmp_path / "attacker", 1)
    with ClientTracker(**tracker_config(dead_url(), folder, queue_size=10**6)) as tracker:
        tracker.track_event("before")
        (folder / "cache.db").rename(tmp_path / "moved.db")
        (folder / "cache.db").symlink_to(tmp_path / "attacker" / "cache.db")
        with pytest.raises(PermissionError, match="is a symbolic link"):
            tracker.track_event("after")
        assert "UnsafeQueueFolder" in tracker.stats()["storage_error"]


def test_the_handler_keeps_events_in_memory_while_the_folder_is_unsafe(
    tmp_path: Path, collector: DevCollector, capfd: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "queue"
    folder.mkdir()
    folder.chmod(0o777)
    log = logging.getLogger("tests.folder_security")
    log.propagate = False
    log.setLevel(logging.INFO)
    handler = HamustroHandler(**tracker_config(collector, folder, queue_size=10**6))
    log.addHandler(handler)  # the application started: the handler did not stop it
    try:
        for i in range(4):
            log.info("e", extra={"event": "e", "user_id": i})
        assert handler.flush(timeout=0.5) is False
        stats = handler.stats()
        assert stats["buffered"] == 4  # kept in memory and counted, nothing written
        assert "UnsafeQueueFolder" in stats["storage_error"]
        assert list(folder.iterdir()) == []
        err = capfd.readouterr().err
        assert f"chmod 700 {folder}" in err
        folder.chmod(0o700)  # fixed: the events go out
        assert handler.flush(timeout=10) is True
        assert sorted(e["user_id"] for e in collector.wait_for(4)) == [0, 1, 2, 3]
    finally:
        log.removeHandler(handler)
        handler.close()


# -- what the queue creates ----------------------------------------------------------------


def test_parent_folders_the_queue_creates_are_0700(tmp_path: Path) -> None:
    old = os.umask(0)  # the process's umask must not matter
    try:
        fill(tmp_path / "a" / "b" / "queue", 1)
    finally:
        os.umask(old)
    for folder in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "queue"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_every_file_is_0600_and_every_folder_0700_with_a_large_value(tmp_path: Path) -> None:
    folder = tmp_path / "queue"
    old = os.umask(0)
    try:
        config = tracker_config(dead_url(), folder, queue_size=10**6, max_event_bytes=4 << 20)
        with ClientTracker(**config) as tracker:
            tracker.track_event("large", params={"blob": "x" * (2 << 20)})  # one 2 MiB value
            tracker.track_event("small")
            seen = modes(folder)  # while open: the WAL files exist
        after = modes(folder)
    finally:
        os.umask(old)
    for found in (seen, after):
        assert found.pop(".") == "0o700"
        assert set(found) <= {"cache.db", "cache.db-wal", "cache.db-shm"}  # no value files
        assert set(found.values()) == {"0o600"}, found
    queue = Queue(folder)
    assert queue.pending_count() == 2
    queue.close()


# -- the CLI's readers change nothing ------------------------------------------------------


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["export"]])
def test_readers_leave_a_foreign_diskcache_folder_byte_for_byte(
    tmp_path: Path, command: list[str]
) -> None:
    folder = tmp_path / "other-app"
    foreign_cache(folder)
    before = snapshot(folder)
    done = run_cli(tmp_path, *command, "--queue-dir", str(folder))
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert "is not a hamustro-logging queue" in line and "nothing was changed" in line
    assert snapshot(folder) == before


@pytest.mark.parametrize("command", ["flush", "retry-rejected"])
def test_writers_refuse_a_foreign_folder_before_touching_it(tmp_path: Path, command: str) -> None:
    folder = tmp_path / "other-app"
    foreign_cache(folder)
    before = snapshot(folder)
    args = ["--queue-dir", str(folder)]
    if command == "flush":
        args += ["--collector-url", dead_url()]
    done = run_cli(tmp_path, command, *args)
    assert done.returncode == 2
    assert "is not a hamustro-logging queue" in one_line(done.stderr)
    assert snapshot(folder) == before


def not_a_database(folder: Path) -> None:
    (folder / "cache.db").write_bytes(b"not a database at all" * 100)


def empty_cache_with_our_settings(folder: Path) -> None:
    diskcache.Cache(str(folder), eviction_policy="none", cull_limit=0).close()


@pytest.mark.parametrize(
    ("make", "says"),
    [(not_a_database, "not a queue"), (empty_cache_with_our_settings, "s/last_sync")],
)
def test_readers_recognise_other_folders_without_writing(
    tmp_path: Path, make: Any, says: str
) -> None:
    folder = tmp_path / "other"
    folder.mkdir()
    make(folder)
    before = snapshot(folder)
    for command in ("status", "export"):
        done = run_cli(tmp_path, command, "--queue-dir", str(folder))
        assert done.returncode in (1, 2)
        assert says in one_line(done.stderr)
    assert snapshot(folder) == before


def test_status_and_export_of_a_queue_at_rest_change_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "queue"
    fill(folder, 3)
    before = snapshot(folder)
    assert set(before) == {".", "cache.db"}  # closed cleanly: no WAL files
    status = run_cli(tmp_path, "status", "--queue-dir", str(folder))
    assert status.returncode == 0, status.stderr
    assert "pending       3 events" in status.stdout
    export = run_cli(tmp_path, "export", "--queue-dir", str(folder))
    assert export.returncode == 0 and len(export.stdout.splitlines()) == 3
    assert snapshot(folder) == before


def test_status_of_a_queue_in_use_sees_its_write_ahead_log(tmp_path: Path) -> None:
    folder = tmp_path / "queue"
    with ClientTracker(**tracker_config(dead_url(), folder, queue_size=10**6)) as tracker:
        for i in range(5):
            tracker.track_event("e", user_id=i)
        assert (folder / "cache.db-wal").exists()
        before = snapshot(folder)
        done = run_cli(tmp_path, "status", "--json", "--queue-dir", str(folder))
        assert done.returncode == 0, done.stderr
        assert '"pending": 5' in done.stdout
        after = snapshot(folder)
    # No file added; the database and its log unchanged. (cache.db-shm is the
    # shared-memory index every reader of a live WAL database updates.)
    assert set(after) == set(before)
    for name in (".", "cache.db", "cache.db-wal"):
        assert after[name] == before[name]


def test_status_works_on_a_folder_made_0500(tmp_path: Path) -> None:
    folder = tmp_path / "queue"
    fill(folder, 2)
    folder.chmod(0o500)
    try:
        before = snapshot(folder)
        done = run_cli(tmp_path, "status", "--queue-dir", str(folder))
        assert done.returncode == 0, done.stderr
        assert "pending       2 events" in done.stdout
        assert snapshot(folder) == before
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize("in_use", [False, True], ids=["at-rest-immutable", "with-wal-mode-ro"])
def test_status_and_export_on_a_read_only_mount(tmp_path: Path, in_use: bool) -> None:
    source = tmp_path / "queue"
    if in_use:  # a copy taken while a tracker had it open: -wal and -shm hold the events
        with ClientTracker(**tracker_config(dead_url(), source, queue_size=10**6)) as tracker:
            for i in range(4):
                tracker.track_event("e", user_id=i)
            copy = tmp_path / "copy"
            shutil.copytree(source, copy)
        source = copy
        assert (source / "cache.db-wal").stat().st_size > 0
    else:
        fill(source, 4)
    before = snapshot(source)
    with read_only_mount(source, tmp_path / "mounted") as mounted:
        status = run_cli(tmp_path, "status", "--queue-dir", str(mounted))
        assert status.returncode == 0, status.stderr
        assert "pending       4 events" in status.stdout
        export = run_cli(tmp_path, "export", "--queue-dir", str(mounted))
        assert export.returncode == 0, export.stderr
        assert len(export.stdout.splitlines()) == 4
    assert snapshot(source) == before


# -- no password in any message ------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://bob:hunter2@127.0.0.1",
        "bob:hunter2@127.0.0.1",
        "http://bob:hunter2@127.0.0.1:99999",
        "http://bob:hunter2@127.0.0.1:port",
        "http://bob:hunter2@[::1",
    ],
)
@pytest.mark.parametrize("command", ["send-test", "flush"])
def test_a_bad_collector_url_is_one_line_without_its_password(
    tmp_path: Path, url: str, command: str
) -> None:
    folder = tmp_path / "queue"
    fill(folder, 1)
    # flush needs only the folder, the URL and the secret (from the environment)
    identity = ["--client-id", "c", "--product-version", "1"] if command == "send-test" else []
    done = run_cli(
        tmp_path, command, "--collector-url", url, *identity, "--queue-dir", str(folder),
    )  # fmt: skip
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert "collector_url" in line
    assert "hunter2" not in done.stderr + done.stdout


def test_send_test_to_a_dead_collector_hides_the_password(tmp_path: Path) -> None:
    url = dead_url().replace("http://", "http://bob:hunter2@")
    done = run_cli(
        tmp_path, "send-test", "--collector-url", url, "--client-id", "c",
        "--product-version", "1",
    )  # fmt: skip
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "***@127.0.0.1:" in line  # the URL is shown, its user:password part blanked
    assert "hunter2" not in done.stderr + done.stdout


@pytest.mark.parametrize("url", ["ftp://bob:hunter2@127.0.0.1", "bob:hunter2@127.0.0.1"])
def test_the_tracker_and_handler_never_show_the_password(tmp_path: Path, url: str) -> None:
    for make in (ClientTracker, HamustroHandler):
        with pytest.raises(ValueError, match="http:// or https://") as caught:
            make(**tracker_config(url, tmp_path / "queue"))
        assert "hunter2" not in str(caught.value)


# -- the development collector's arguments -------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--port", "99999"], "port"),
        (["--port", "0", "--output", "/nonexistent/x"], "/nonexistent/x"),
    ],
)
def test_collector_with_a_bad_port_or_output_prints_one_line(
    tmp_path: Path, args: list[str], says: str
) -> None:
    done = run_cli(tmp_path, "collector", *args)
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert line.startswith("hamustro-logging: collector: cannot start") and says in line
