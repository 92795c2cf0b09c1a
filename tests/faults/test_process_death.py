"""An event that ``emit()`` accepted survives the death of its process (issue 16).

Every scenario runs real processes against the development collector on
loopback, and ends the same way: once every process of the run is gone, a
fresh process on the same queue folder (``hamustro-logging flush``, or a new
``HamustroHandler``) delivers what is left, and the collector must hold every
event that was acknowledged. What each scenario proves:

1. **A killed script** (``test_killed_script_*``): a plain script logging at
   ~1k ev/s, ~20k ev/s or as fast as it can gets SIGTERM with no handler
   installed (``docker stop``, ``systemctl stop``) or SIGKILL (the OOM
   killer), three runs in a row on one folder (a restarted service: each
   run starts on what the killed one left), also with a busy process on the
   machine. "Acknowledged" is recorded per event: after each ``emit()``
   returns, the script stores the count in a file it maps into memory (the
   kernel keeps that page when the process dies), so every event with a
   lower index was accepted. The signal is sent the moment another
   ``emit()`` returned. None of the acknowledged events may be lost.
2. **multiprocessing** (``test_multiprocessing_*``): start methods ``fork``,
   ``spawn`` and ``forkserver``; ``Process`` children and ``Pool`` workers
   (also recycled after each task, ``maxtasksperchild=1``); children that
   build their own handler and (``fork``) children that inherit the parent's.
   Forked children (``fork`` and ``forkserver``) end through ``os._exit``,
   without ``logging.shutdown()``; spawned ones exit as scripts do.
3. **Celery** (``test_celery_*``): a real worker, prefork pool, the
   filesystem broker, the handler on the root logger of the worker's main
   process (its children inherit it). Every event of a task that finished is
   delivered after a warm shutdown, with a child per task
   (``worker_max_tasks_per_child=1``); and with a pool child SIGKILLed in
   the middle of a long task, every event that task had logged is too.
4. **gunicorn** (``test_gunicorn_*``): sync workers recycled by
   ``max_requests``, and a worker SIGKILLed right after it answered: every
   event of a request that got its response is delivered.

Duplicates are counted, never hidden behind a ``set()``: the collector's
events are compared as multisets. An event that arrives under two numbers
(session, nr) entered the store twice: always a failure. A resent event
(same number) is allowed only as far as it is counted: by the folder
(``status --json``'s ``resent``, once the store keeps one); without that
figure, where no process was killed, by the ``stats()`` of the process that
outlived the others, else none is allowed. Where a process was killed while
its request may have been in flight, a resend cannot be avoided and its
count died with it: without the folder's figure, the duplicates are only
reported.

Each run's figures are printed as one ``process-death:`` line (``pytest -s``
shows them). Every wait polls a condition with a generous deadline; no test
asserts a duration. The slowest (tens of seconds each) are marked ``slow``:
``pytest -m "not slow"`` leaves them out.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import mmap
import os
import re
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hamustro_logging.collector import DevCollector

from ..support import FAST, IDENTITY, TEST_SECRET

ROOT = Path(__file__).resolve().parents[2]

#: One event key: the values of the event's parameters, in a fixed order.
Key = tuple[int, ...]


# -- processes -------------------------------------------------------------------------


def handler_options(collector: DevCollector, queue_dir: Path) -> dict[str, Any]:
    """What an app gives ``HamustroHandler``: the identity, the collector, the folder."""
    return {
        **IDENTITY,
        "collector_url": collector.url,
        "shared_secret_key": TEST_SECRET,
        "queue_dir": str(queue_dir),
        **FAST,
    }


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any ``HAMUSTRO_*`` variable of the machine, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAMUSTRO_")}
    env.update(extra)
    return env


def python_path(folder: Path) -> str:
    """PYTHONPATH with ``folder`` (where the test wrote an app module) first."""
    return os.pathsep.join([str(folder), *filter(None, [os.environ.get("PYTHONPATH")])])


class Processes:
    """Starts the test's processes, each in a session of its own, and kills what is left.

    Their output goes to files in ``tmp_path`` (a pipe nobody reads could
    fill and block a process the test waits for).
    """

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        argv: list[str],
        name: str,
        env: dict[str, str] | None = None,
        stdin: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv``, its output into NAME.out and NAME.err (stdin: a pipe to it)."""
        out = (self.tmp_path / f"{name}.out").open("wb")
        err = (self.tmp_path / f"{name}.err").open("wb")
        with out, err:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.tmp_path,
                env=env if env is not None else clean_env(),
                start_new_session=True,  # its own process group: its children die with it
            )
        self.started.append(proc)
        return proc

    def script(
        self,
        text: str,
        name: str,
        config: dict[str, Any],
        env: dict[str, str] | None = None,
        stdin: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Write ``text`` into ``NAME.py`` and run it with ``config`` (JSON) as argv[1]."""
        path = self.tmp_path / f"{name}.py"
        path.write_text(text)
        return self.start([sys.executable, str(path), json.dumps(config)], name, env, stdin)

    def output(self, name: str) -> str:
        return (self.tmp_path / f"{name}.out").read_text(errors="replace")

    def errors(self, name: str) -> str:
        return (self.tmp_path / f"{name}.err").read_text(errors="replace")[-4000:]

    def hog(self) -> None:
        """A busy loop on one core for the rest of the test."""
        self.start([sys.executable, "-c", "while True: pass"], f"hog-{len(self.started)}")

    def kill_all(self) -> None:
        for proc in self.started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    yield started
    started.kill_all()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g} s: {what}")
        time.sleep(0.02)


def finish(proc: subprocess.Popen[bytes], timeout: float, what: str) -> int:
    """Wait for ``proc`` to end; fail (a hang) after ``timeout`` seconds."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} did not end within {timeout:g} s")


def cli(processes: Processes, name: str, *args: str, env: dict[str, str]) -> tuple[int, str]:
    """Run ``hamustro-logging ARGS`` to its end; its exit code and stdout."""
    proc = processes.start([sys.executable, "-m", "hamustro_logging", *args], name, env)
    code = finish(proc, 120, f"hamustro-logging {' '.join(args)}")
    return code, processes.output(name)


def cli_env(collector: DevCollector, queue_dir: Path) -> dict[str, str]:
    """How an operator points ``hamustro-logging flush`` at a folder: its variables."""
    return clean_env(
        HAMUSTRO_COLLECTOR_URL=collector.url,
        HAMUSTRO_SHARED_SECRET_KEY=TEST_SECRET,
        HAMUSTRO_QUEUE_DIR=str(queue_dir),
    )


def flush_folder(processes: Processes, collector: DevCollector, queue_dir: Path) -> None:
    """``hamustro-logging flush`` until it says nothing is left (it exits 1 while some is)."""
    env = cli_env(collector, queue_dir)
    deadline = time.monotonic() + 60
    for attempt in range(1000):
        code, out = cli(processes, f"flush-{attempt}", "flush", env=env)
        if code == 0:
            return
        assert code == 1, f"flush exited {code}: {out}{processes.errors(f'flush-{attempt}')}"
        if time.monotonic() > deadline:
            pytest.fail(f"flush still leaves events after 60 s: {out}")
        time.sleep(0.2)  # another process holds their lease: ask again


def folder_resent(processes: Processes, queue_dir: Path) -> int | None:
    """The folder's count of possible duplicates sent (``status --json``), if it keeps one."""
    code, out = cli(
        processes, "status", "status", "--json", "--queue-dir", str(queue_dir), env=clean_env()
    )
    assert code == 0, processes.errors("status")
    resent = json.loads(out).get("resent")
    return resent if isinstance(resent, int) else None


# -- what arrived ----------------------------------------------------------------------


def arrivals(collector: DevCollector, names: tuple[str, ...]) -> list[tuple[Key, str, int]]:
    """Each event at the collector: the values of its parameters ``names``, its session, its nr."""
    found = []
    for event in collector.events():
        params = json.loads(event["parameters"])
        found.append((tuple(int(params[name]) for name in names), event["session"], event["nr"]))
    return found


def received(collector: DevCollector, *names: str) -> Counter[Key]:
    """Each event at the collector, as the values of its parameters ``names``, counted."""
    return Counter(key for key, _, _ in arrivals(collector, names))


@dataclass
class Tally:
    """Acknowledged events against the collector's multiset."""

    acknowledged: set[Key]
    arrived: Counter[Key]
    #: Events that may arrive though nobody waited for their acknowledgement
    #: (the one being logged when its process was killed).
    maybe: Callable[[Key], bool] = field(default=lambda key: False)
    #: Copies that arrived under another (session, nr) than the first copy. A
    #: resend repeats an event's number; a second number means the event
    #: entered the store twice, which no lost answer explains.
    numbered_twice: int = 0

    @classmethod
    def of(
        cls,
        collector: DevCollector,
        acknowledged: set[Key],
        names: tuple[str, ...],
        maybe: Callable[[Key], bool] = lambda key: False,
    ) -> Tally:
        """The collector's events, as the values of their parameters ``names``."""
        arrived: Counter[Key] = Counter()
        numbers: dict[Key, set[tuple[str, int]]] = {}
        for key, session, nr in arrivals(collector, names):
            arrived[key] += 1
            numbers.setdefault(key, set()).add((session, nr))
        twice = sum(len(seen) - 1 for seen in numbers.values())
        return cls(acknowledged, arrived, maybe, twice)

    @property
    def lost(self) -> list[Key]:
        return sorted(key for key in self.acknowledged if self.arrived[key] == 0)

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.arrived.values() if n > 1)

    @property
    def unexpected(self) -> list[Key]:
        return sorted(
            key for key in self.arrived if key not in self.acknowledged and not self.maybe(key)
        )

    def line(self, scenario: str, **more: object) -> str:
        extra = "".join(f" {name}={value}" for name, value in more.items())
        return (
            f"process-death: {scenario} acknowledged={len(self.acknowledged)} "
            f"lost={len(self.lost)} duplicates={self.duplicates} "
            f"numbered_twice={self.numbered_twice} "
            f"unexpected={len(self.unexpected)}{extra}"
        )


def check(tally: Tally, scenario: str, counted: int | None, **more: object) -> None:
    """Nothing acknowledged lost, nothing unknown arrived, nothing stored twice, and no
    more duplicates than ``counted``.

    ``counted`` is the figure of possible duplicates sent that the duplicates
    must not exceed (see :func:`duplicates_allowed`), or None where none can
    be demanded: then they are only reported.
    """
    line = tally.line(scenario, counted=counted, **more)
    print(line)
    assert tally.lost == [], f"{line}; first lost: {tally.lost[:10]}"
    assert tally.unexpected == [], f"{line}; {tally.unexpected[:10]}"
    assert tally.numbered_twice == 0, f"{line}: events stored twice"
    if counted is not None:
        assert tally.duplicates <= counted, f"{line}: duplicates nobody counted"


def duplicates_allowed(
    folder: int | None, survivor: int | None, killed_mid_request: bool
) -> int | None:
    """How many duplicates a run may show: the count of possible duplicates sent.

    The folder's ``resent`` figure when it keeps one (every process's sends).
    Else, where no process was killed during a request, the ``resent`` of
    the process that outlived the others (the parent, the recovering
    handler), or none at all. Where one was killed during a request and the
    folder keeps no figure, the killed process took its count along: None.
    """
    if folder is not None:
        return folder
    if killed_mid_request:
        return None
    return survivor or 0


# -- 1. a plain script killed by a signal ----------------------------------------------

#: Logs until killed, at ``rate`` events a second (0: as fast as it can).
LOG_UNTIL_KILLED = """
import json, logging, mmap, struct, sys, time
from hamustro_logging import HamustroHandler

cfg = json.loads(sys.argv[1])
handler = HamustroHandler(**cfg["handler"])
log = logging.getLogger("death.app")
log.addHandler(handler)
log.setLevel(logging.INFO)
log.propagate = False

# The acknowledgement: slot 0 counts the emit() calls that returned, slot 1
# the events the handler said it dropped (stats(), every 1,000). A shared map
# of a file: the page is the kernel's, it outlives this process.
with open(cfg["acked"], "r+b") as f:
    acked = mmap.mmap(f.fileno(), 16)
count = struct.Struct("<Q")
run, rate = cfg["run"], cfg["rate"]
started = time.monotonic()
i = 0
while True:
    if rate:
        ahead = started + i / rate - time.monotonic()
        if ahead > 0.002:  # sleep in steps the clock can keep
            time.sleep(ahead)
    log.info("e", extra={"event": "death.e", "params": {"run": run, "i": i}})
    i += 1
    count.pack_into(acked, 0, i)
    if i % 1000 == 0:
        count.pack_into(acked, 8, sum(handler.stats()["dropped"].values()))
"""

#: A fresh process on the folder: its handler delivers until the test has seen
#: everything arrive (stdin closed), then closes and prints its stats.
RECOVER = """
import json, logging, sys, time
from hamustro_logging import HamustroHandler

cfg = json.loads(sys.argv[1])
handler = HamustroHandler(**cfg["handler"])
deadline = time.monotonic() + 60
while not handler.flush(timeout=5) and time.monotonic() < deadline:
    pass
sys.stdin.read()  # the test closes it when it saw what it waited for, or gave up
stats = handler.stats()
handler.close()
print(json.dumps({"resent": stats["resent"], "dropped": stats["dropped"]}), flush=True)
"""

KILLS = 3
#: Kill once this many events were acknowledged (about 1.5 s at 1k ev/s, 0.75 s at
#: 20k ev/s, when idle). Every event also costs the test process, which checks it.
KILL_AFTER = {1_000: 1_500, 20_000: 15_000, 0: 15_000}


def read_counts(path: Path) -> tuple[int, int]:
    """The script's two counters: events acknowledged, events its handler dropped."""
    acked, dropped = struct.unpack("<QQ", path.read_bytes()[:16])
    return acked, dropped


def acked_in(seen: mmap.mmap) -> int:
    """The acknowledged count, read through the test's own map of the file."""
    count: int = struct.unpack_from("<Q", seen, 0)[0]
    return count


def kill_right_after_an_emit_of(pid: int, seen: mmap.mmap, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``pid`` the moment another ``emit()`` returned.

    A process may die at any moment; this is the one most likely to find an
    accepted event not yet handled by anything in the background (at 1k
    ev/s, a signal sent at a random time rarely does).
    """
    before = acked_in(seen)
    deadline = time.monotonic() + 5
    while acked_in(seen) == before and time.monotonic() < deadline:
        pass  # (spins for about one event's time: a millisecond at 1k ev/s)
    os.kill(pid, sig)


def recover_with_handler(
    processes: Processes, collector: DevCollector, queue_dir: Path, done: Callable[[], bool]
) -> int:
    """A new ``HamustroHandler`` process on the folder delivers, watched until ``done``.

    It keeps running (a live process on the folder) until everything arrived
    or 30 s passed; its own ``stats()["resent"]`` is returned.
    """
    config = {"handler": handler_options(collector, queue_dir)}
    proc = processes.script(RECOVER, "recover", config, stdin=True)
    assert proc.stdin is not None
    deadline = time.monotonic() + 30
    while not done() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.stdin.close()
    assert finish(proc, 30, "the recovering handler's process") == 0, processes.errors("recover")
    return int(json.loads(processes.output("recover"))["resent"])


def all_arrived(collector: DevCollector, acknowledged: set[Key], *names: str) -> Callable[[], bool]:
    """A condition: every acknowledged event is at the collector.

    Each call reads only the events that arrived since the last one (the
    test process must not eat the CPU the delivering process needs).
    """
    missing = set(acknowledged)
    seen = 0

    def done() -> bool:
        nonlocal seen
        events = collector.events()
        for event in events[seen:]:
            params = json.loads(event["parameters"])
            missing.discard(tuple(int(params[name]) for name in names))
        seen = len(events)
        return not missing

    return done


#: The scenarios that take tens of seconds (``-m "not slow"`` leaves them out).
SLOW = pytest.mark.slow

KILL_CASES = [
    # (signal, events a second (0: unthrottled), who delivers afterwards, busy processes)
    pytest.param(signal.SIGTERM, 1_000, "handler", 0, id="sigterm-1k"),
    pytest.param(signal.SIGTERM, 20_000, "cli", 0, marks=SLOW, id="sigterm-20k"),
    pytest.param(signal.SIGTERM, 0, "handler", 0, marks=SLOW, id="sigterm-unthrottled"),
    pytest.param(signal.SIGKILL, 1_000, "cli", 0, id="sigkill-1k"),
    pytest.param(signal.SIGKILL, 20_000, "handler", 0, marks=SLOW, id="sigkill-20k"),
    pytest.param(signal.SIGKILL, 0, "cli", 0, marks=SLOW, id="sigkill-unthrottled"),
    pytest.param(signal.SIGTERM, 20_000, "handler", 1, marks=SLOW, id="sigterm-20k-cpu-hog"),
    pytest.param(signal.SIGKILL, 1_000, "handler", 1, id="sigkill-1k-cpu-hog"),
    pytest.param(signal.SIGKILL, 20_000, "cli", 1, marks=SLOW, id="sigkill-20k-cpu-hog"),
    pytest.param(signal.SIGKILL, 0, "handler", 1, marks=SLOW, id="sigkill-unthrottled-cpu-hog"),
]


@pytest.mark.parametrize(("sig", "rate", "recovery", "hogs"), KILL_CASES)
def test_killed_script_loses_no_acknowledged_event(
    sig: signal.Signals,
    rate: int,
    recovery: str,
    hogs: int,
    collector: DevCollector,
    tmp_path: Path,
    processes: Processes,
) -> None:
    queue_dir = tmp_path / "q"
    for _ in range(hogs):
        processes.hog()
    acked: list[int] = []
    dropped = 0
    # Three runs of the app on one folder, each killed: a restarted service.
    for run in range(KILLS):
        counts = tmp_path / f"acked-{run}"
        counts.write_bytes(bytes(16))
        config = {
            "handler": handler_options(collector, queue_dir),
            "run": run,
            "rate": rate,
            "acked": str(counts),
        }
        proc = processes.script(LOG_UNTIL_KILLED, f"run-{run}", config)
        with open(counts, "rb") as f, mmap.mmap(f.fileno(), 16, access=mmap.ACCESS_READ) as seen:
            wait_until(
                lambda: acked_in(seen) >= KILL_AFTER[rate] or proc.poll() is not None,  # noqa: B023 -- called in this iteration
                60,
                f"run {run}: {KILL_AFTER[rate]} events acknowledged",
            )
            assert proc.poll() is None, processes.errors(f"run-{run}")
            kill_right_after_an_emit_of(proc.pid, seen, sig)
        # No signal handler: the signal's default action ended it, no exit code of its own.
        assert finish(proc, 30, f"run {run} after {sig.name}") == -sig
        n, d = read_counts(counts)
        acked.append(n)
        dropped += d

    acknowledged: set[Key] = {(run, i) for run, n in enumerate(acked) for i in range(n)}
    recovered_resent: int | str = "-"
    if recovery == "handler":
        done = all_arrived(collector, acknowledged, "run", "i")
        recovered_resent = recover_with_handler(processes, collector, queue_dir, done)
    else:
        flush_folder(processes, collector, queue_dir)
    # Every process on the folder is gone, and the collector stores an event
    # before it answers: what it holds now is all that will ever arrive.
    tally = Tally.of(
        collector,
        acknowledged,
        ("run", "i"),
        maybe=lambda key: key[1] == acked[key[0]],  # the one being logged at the kill
    )
    lost = tally.lost
    lost_per_run = [sum(1 for key in lost if key[0] == run) for run in range(KILLS)]
    check(
        tally,
        f"{sig.name} rate={rate or 'max'} hogs={hogs} recovery={recovery}",
        duplicates_allowed(folder_resent(processes, queue_dir), None, killed_mid_request=True),
        acked_per_run=acked,
        lost_per_run=lost_per_run,
        dropped=dropped,
        recovery_resent=recovered_resent,
    )


# -- 2. multiprocessing ----------------------------------------------------------------

MULTIPROCESSING = """
import json, multiprocessing, sys, time

sys.path.insert(0, {root!r})  # spawned and forkserver children get this sys.path too
from tests.faults import children_helper as helper


def main():
    cfg = json.loads(sys.argv[1])
    ctx = multiprocessing.get_context(cfg["method"])
    options = json.dumps(cfg["handler"])
    inherit = cfg["inherit"]
    # Inherited: the parent's handler, built before its children start (fork
    # only). Else each child builds its own and the parent has none meanwhile.
    handler = helper.setup(options) if inherit else None
    jobs = [(k, cfg["n"]) for k in range(cfg["jobs"])]
    exitcodes = []
    if cfg["kind"] == "process":
        if inherit:
            procs = [ctx.Process(target=helper.emit, args=job) for job in jobs]
        else:
            target, args = helper.setup_and_emit, [(options, *job) for job in jobs]
            procs = [ctx.Process(target=target, args=a) for a in args]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        exitcodes = [p.exitcode for p in procs]
    else:
        init = {{}} if inherit else {{"initializer": helper.setup, "initargs": (options,)}}
        pool = ctx.Pool(2, maxtasksperchild=cfg["maxtasksperchild"], **init)
        pool.starmap(helper.emit, jobs, chunksize=1)
        pool.close()
        pool.join()
    if handler is None:
        handler = helper.setup(options)  # the parent's own, once its children are gone
    deadline = time.monotonic() + 30
    flushed = False
    while not flushed and time.monotonic() < deadline:
        flushed = handler.flush(timeout=5)
    result = {{"exitcodes": exitcodes, "flushed": flushed, "resent": handler.stats()["resent"]}}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
"""

#: Process children: 4 x 200 events; Pool tasks: 40 x 20 events on 2 workers,
#: 16 x 50 when each task has a process of its own (each costs an interpreter's start).
PROCESS_JOBS, PROCESS_EVENTS = 4, 200
POOL_JOBS, POOL_EVENTS = 40, 20
RECYCLED_POOL_JOBS, RECYCLED_POOL_EVENTS = 16, 50

MULTIPROCESSING_CASES = [
    # (start method, "process" or "pool", children inherit the parent's handler, maxtasksperchild)
    pytest.param("fork", "process", False, None, id="fork-process-own"),
    pytest.param("fork", "process", True, None, id="fork-process-inherited"),
    pytest.param("spawn", "process", False, None, id="spawn-process-own"),
    pytest.param("forkserver", "process", False, None, id="forkserver-process-own"),
    pytest.param("fork", "pool", False, None, id="fork-pool-own"),
    pytest.param("fork", "pool", True, None, id="fork-pool-inherited"),
    pytest.param("fork", "pool", False, 1, id="fork-pool-own-maxtasks1"),
    pytest.param("fork", "pool", True, 1, id="fork-pool-inherited-maxtasks1"),
    pytest.param("spawn", "pool", False, None, id="spawn-pool-own"),
    # An interpreter started for each task, two at a time.
    pytest.param("spawn", "pool", False, 1, marks=SLOW, id="spawn-pool-own-maxtasks1"),
    pytest.param("forkserver", "pool", False, None, id="forkserver-pool-own"),
    pytest.param("forkserver", "pool", False, 1, id="forkserver-pool-own-maxtasks1"),
]


@pytest.mark.parametrize(("method", "kind", "inherit", "maxtasks"), MULTIPROCESSING_CASES)
def test_multiprocessing_children_deliver_every_event(
    method: str,
    kind: str,
    inherit: bool,
    maxtasks: int | None,
    collector: DevCollector,
    tmp_path: Path,
    processes: Processes,
) -> None:
    queue_dir = tmp_path / "q"
    if kind == "process":
        jobs, n = PROCESS_JOBS, PROCESS_EVENTS
    elif maxtasks == 1:
        jobs, n = RECYCLED_POOL_JOBS, RECYCLED_POOL_EVENTS
    else:
        jobs, n = POOL_JOBS, POOL_EVENTS
    config = {
        "method": method,
        "kind": kind,
        "inherit": inherit,
        "maxtasksperchild": maxtasks,
        "jobs": jobs,
        "n": n,
        "handler": handler_options(collector, queue_dir),
    }
    proc = processes.script(MULTIPROCESSING.format(root=str(ROOT)), "parent", config)
    assert finish(proc, 90, "the multiprocessing parent") == 0, processes.errors("parent")
    result = json.loads(processes.output("parent").splitlines()[-1])
    assert result["exitcodes"] == ([0] * jobs if kind == "process" else [])
    by_the_run = len(received(collector, "child", "i"))
    flush_folder(processes, collector, queue_dir)  # what the run left, if anything
    expected: set[Key] = {(k, i) for k in range(jobs) for i in range(n)}
    folder = folder_resent(processes, queue_dir)
    check(
        Tally.of(collector, expected, ("child", "i")),
        f"multiprocessing {method} {kind} inherit={inherit} maxtasksperchild={maxtasks}",
        duplicates_allowed(folder, result["resent"], killed_mid_request=False),
        delivered_by_the_run=by_the_run,
        parent_flushed=result["flushed"],
        parent_resent=result["resent"],
        folder_resent=folder,
    )


# -- 3. a Celery worker ----------------------------------------------------------------

#: The Celery app, written into tmp_path as ``celery_app.py``; its settings
#: come from ``celery_config.json`` next to it.
CELERY_APP = """
import json, logging, mmap, os, struct
from pathlib import Path

from celery import Celery, signals

from hamustro_logging import HamustroHandler

HERE = Path(__file__).resolve().parent
CONFIG = json.loads((HERE / "celery_config.json").read_text())
BROKER = str(HERE / "broker")

app = Celery("celery_app")
app.conf.update(
    broker_url="filesystem://",
    broker_transport_options={
        "data_folder_in": BROKER,
        "data_folder_out": BROKER,
        "processed_folder": str(HERE / "processed"),
        "store_processed": True,
        "polling_interval": 0.05,
    },
    broker_connection_retry_on_startup=True,
    # Each task's outcome, a file per task: success, or the main process's
    # WorkerLostError for a task whose child was killed.
    result_backend="file://" + str(HERE / "results"),
    worker_prefetch_multiplier=1,
    worker_max_tasks_per_child=CONFIG["max_tasks_per_child"],
    worker_enable_remote_control=False,
)


@signals.setup_logging.connect
def setup_logging(**kwargs):
    # Where a Celery user puts their logging setup: a receiver of setup_logging
    # replaces Celery's own. It runs once, in the worker's main process, before
    # the prefork pool forks its children: they inherit the root logger and
    # this handler (which gives a forked child threads of its own).
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(HamustroHandler(**CONFIG["handler"]))
    shown = logging.StreamHandler()  # the worker's warnings, for a failing test's message
    shown.setLevel(logging.WARNING)
    root.addHandler(shown)


log = logging.getLogger("celery_app.tasks")


@app.task
def log_events(task_no, n):
    for i in range(n):
        log.info("e", extra={"event": "celery.e", "params": {"task": task_no, "i": i}})
    # Finished: every event of this task was accepted by emit(). (Named with
    # the child's pid, created at once: the test may kill this child next.)
    (HERE / "finished" / f"{task_no}-{os.getpid()}").touch()


@app.task
def log_until_killed(task_no):
    # A long task the test kills: it counts its accepted events in a shared
    # map of a file, as the killed scripts do, and its pid next to the count.
    path = HERE / "acked" / str(task_no)
    path.write_bytes(bytes(16))
    with open(path, "r+b") as f:
        acked = mmap.mmap(f.fileno(), 16)
    struct.pack_into("<Q", acked, 8, os.getpid())
    i = 0
    while True:
        log.info("e", extra={"event": "celery.e", "params": {"task": task_no, "i": i}})
        i += 1
        struct.pack_into("<Q", acked, 0, i)
"""

#: Sends the tasks through the broker folder, as the app's producer would.
SEND_TASKS = """
import json, sys

sys.path.insert(0, ".")
from celery_app import log_events, log_until_killed

cfg = json.loads(sys.argv[1])
for task_no in range(cfg["tasks"]):
    if task_no in cfg["long_at"]:
        log_until_killed.delay(cfg["long_at"].index(task_no) + cfg["long"])
    log_events.delay(task_no, cfg["n"])
"""

CELERY_TASKS, CELERY_EVENTS = 40, 20
#: The numbers of the long tasks, killed while they log.
LONG_TASKS = 1000


def start_celery_worker(
    processes: Processes,
    collector: DevCollector,
    queue_dir: Path,
    max_tasks_per_child: int | None,
    long_at: list[int],
) -> subprocess.Popen[bytes]:
    """Queue the tasks (a long one before each task of ``long_at``), then start
    ``celery worker`` (prefork, 2 children) on them."""
    tmp = processes.tmp_path
    for folder in ("broker", "processed", "finished", "results", "acked"):
        (tmp / folder).mkdir()
    config = {
        "handler": handler_options(collector, queue_dir),
        "max_tasks_per_child": max_tasks_per_child,
    }
    (tmp / "celery_config.json").write_text(json.dumps(config))
    (tmp / "celery_app.py").write_text(CELERY_APP)
    env = clean_env(PYTHONPATH=python_path(tmp))
    tasks = {"tasks": CELERY_TASKS, "n": CELERY_EVENTS, "long_at": long_at, "long": LONG_TASKS}
    sender = processes.script(SEND_TASKS, "send_tasks", tasks, env)
    assert finish(sender, 60, "sending the tasks") == 0, processes.errors("send_tasks")
    argv = [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool", "prefork"]
    argv += ["--concurrency", "2", "--without-heartbeat", "--without-gossip", "--without-mingle"]
    return processes.start(argv, "worker", env)


def finished_tasks(tmp_path: Path) -> dict[int, int]:
    """Task number -> the pid of the child that ran it to its end."""
    names = (name.split("-") for name in os.listdir(tmp_path / "finished"))
    return {int(task): int(pid) for task, pid in names}


def tasks_ended(tmp_path: Path) -> int:
    """Tasks with an outcome in the result backend (succeeded, or lost with their child)."""
    return sum(name.startswith("celery-task-meta-") for name in os.listdir(tmp_path / "results"))


def wait_for_every_task(tmp_path: Path, worker: subprocess.Popen[bytes], total: int) -> None:
    wait_until(
        lambda: tasks_ended(tmp_path) == total or worker.poll() is not None,
        50,
        f"an outcome for each of the {total} tasks",
    )


def warm_shutdown(processes: Processes, worker: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the worker's main process: it lets running tasks end, then exits."""
    assert worker.poll() is None, processes.errors("worker")
    worker.send_signal(signal.SIGTERM)
    assert finish(worker, 60, "the worker's warm shutdown") == 0, processes.errors("worker")


def check_celery(
    processes: Processes,
    collector: DevCollector,
    queue_dir: Path,
    scenario: str,
    long_acked: list[int],
) -> None:
    """Every event of a finished task, and every accepted event of a killed long task."""
    by_the_run = len(received(collector, "task", "i"))
    flush_folder(processes, collector, queue_dir)
    finished = finished_tasks(processes.tmp_path)
    assert sorted(finished) == list(range(CELERY_TASKS)), processes.errors("worker")
    expected: set[Key] = {(t, i) for t in finished for i in range(CELERY_EVENTS)}
    expected |= {(LONG_TASKS + k, i) for k, n in enumerate(long_acked) for i in range(n)}
    folder = folder_resent(processes, queue_dir)
    check(
        Tally.of(
            collector,
            expected,
            ("task", "i"),
            # the event a long task was logging when it was killed
            maybe=lambda key: key[0] >= LONG_TASKS and key[1] == long_acked[key[0] - LONG_TASKS],
        ),
        scenario,
        duplicates_allowed(folder, None, killed_mid_request=bool(long_acked)),
        long_acked=long_acked,
        delivered_by_the_run=by_the_run,
        folder_resent=folder,
    )


@SLOW
def test_celery_worker_child_per_task_then_warm_shutdown_delivers_every_event(
    collector: DevCollector, tmp_path: Path, processes: Processes
) -> None:
    queue_dir = tmp_path / "q"
    worker = start_celery_worker(processes, collector, queue_dir, 1, long_at=[])
    wait_for_every_task(tmp_path, worker, CELERY_TASKS)
    warm_shutdown(processes, worker)
    check_celery(processes, collector, queue_dir, "celery max_tasks_per_child=1", [])


@SLOW
def test_celery_pool_child_sigkilled_mid_task_loses_no_accepted_event(
    collector: DevCollector, tmp_path: Path, processes: Processes
) -> None:
    queue_dir = tmp_path / "q"
    # No recycling: a killed child ran finished tasks before its long one.
    long_at = [CELERY_TASKS // 3, 2 * CELERY_TASKS // 3]
    worker = start_celery_worker(processes, collector, queue_dir, None, long_at)
    long_acked = []
    for k in range(len(long_at)):
        counts = tmp_path / "acked" / str(LONG_TASKS + k)
        wait_until(
            lambda: (
                (counts.exists() and read_counts(counts)[0] >= 2_000)  # noqa: B023 -- called in this iteration
                or worker.poll() is not None
            ),
            50,
            f"long task {k} logs",
        )
        child = read_counts(counts)[1]
        # Killed inside the task's own code, never inside the pool's messaging:
        # a child killed holding the pool's pipe lock stalls the whole pool.
        with open(counts, "rb") as f, mmap.mmap(f.fileno(), 16, access=mmap.ACCESS_READ) as seen:
            kill_right_after_an_emit_of(child, seen)
        long_acked.append(read_counts(counts)[0])
    wait_for_every_task(tmp_path, worker, CELERY_TASKS + len(long_at))
    warm_shutdown(processes, worker)
    check_celery(processes, collector, queue_dir, "celery children SIGKILLed", long_acked)


# -- 4. gunicorn -----------------------------------------------------------------------

#: The WSGI app, written into tmp_path as ``wsgi_app.py``; its settings come
#: from ``wsgi_config.json`` next to it.
WSGI_APP = """
import json, logging, os
from pathlib import Path
from urllib.parse import parse_qs

from hamustro_logging import HamustroHandler

HERE = Path(__file__).resolve().parent
CONFIG = json.loads((HERE / "wsgi_config.json").read_text())

# Where a WSGI app sets up its logging: when its module is imported, which
# gunicorn does in each worker after the fork (no --preload), so each worker
# has a handler of its own on the folder.
log = logging.getLogger("wsgi_app")
log.setLevel(logging.INFO)
log.addHandler(HamustroHandler(**CONFIG["handler"]))


def app(environ, start_response):
    request = int(parse_qs(environ["QUERY_STRING"])["request"][0])
    for i in range(CONFIG["n"]):
        log.info("e", extra={"event": "wsgi.e", "params": {"request": request, "i": i}})
    body = json.dumps({"pid": os.getpid()}).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    start_response("200 OK", headers)
    return [body]
"""

WSGI_REQUESTS, WSGI_EVENTS = 60, 20
#: A worker is replaced after this many requests (gunicorn's ``max_requests``).
MAX_REQUESTS = 7


def start_gunicorn(
    processes: Processes, collector: DevCollector, queue_dir: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """gunicorn, 2 sync workers recycled every MAX_REQUESTS requests; its port."""
    tmp = processes.tmp_path
    config = {"handler": handler_options(collector, queue_dir), "n": WSGI_EVENTS}
    (tmp / "wsgi_config.json").write_text(json.dumps(config))
    (tmp / "wsgi_app.py").write_text(WSGI_APP)
    argv = [sys.executable, "-m", "gunicorn", "--workers", "2", "--bind", "127.0.0.1:0"]
    argv += ["--max-requests", str(MAX_REQUESTS), "--max-requests-jitter", "0"]
    # (--no-control-socket: gunicorn would make its control socket in $HOME.)
    argv += ["--graceful-timeout", "20", "--no-control-socket", "wsgi_app:app"]
    server = processes.start(argv, "gunicorn", clean_env(PYTHONPATH=python_path(tmp)))
    listening = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")
    wait_until(
        lambda: bool(listening.search(processes.errors("gunicorn"))) or server.poll() is not None,
        30,
        "gunicorn listens",
    )
    found = listening.search(processes.errors("gunicorn"))
    assert found, processes.errors("gunicorn")
    return server, int(found.group(1))


def get(port: int, request: int) -> int | None:
    """GET the app for ``request``: the pid of the worker that answered, or None (no answer)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", f"/?request={request}")
        response = connection.getresponse()
        body = response.read()
    except (ConnectionError, http.client.HTTPException):
        return None  # (the worker died with the request: it got no answer)
    finally:
        connection.close()
    assert response.status == 200, body
    pid: int = json.loads(body)["pid"]
    return pid


@pytest.mark.parametrize("kill_every", [None, 5], ids=["recycled", "recycled-and-sigkilled"])
def test_gunicorn_workers_deliver_every_event_of_an_answered_request(
    kill_every: int | None, collector: DevCollector, tmp_path: Path, processes: Processes
) -> None:
    queue_dir = tmp_path / "q"
    server, port = start_gunicorn(processes, collector, queue_dir)
    answered: list[int] = []
    killed = 0
    for request in range(WSGI_REQUESTS):
        pid = get(port, request)
        if pid is None:
            continue
        answered.append(request)
        if kill_every and len(answered) % kill_every == 0:
            # The worker that just answered dies at once: its events were accepted
            # before it answered. (Recycled meanwhile: nothing to kill.)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
    server.send_signal(signal.SIGTERM)  # gunicorn's graceful shutdown
    assert finish(server, 60, "gunicorn's graceful shutdown") == 0, processes.errors("gunicorn")
    by_the_run = len(received(collector, "request", "i"))
    flush_folder(processes, collector, queue_dir)
    expected: set[Key] = {(r, i) for r in answered for i in range(WSGI_EVENTS)}
    unanswered = set(range(WSGI_REQUESTS)) - set(answered)
    folder = folder_resent(processes, queue_dir)
    check(
        # A request that got no answer may have logged some of its events.
        Tally.of(collector, expected, ("request", "i"), maybe=lambda key: key[0] in unanswered),
        f"gunicorn max_requests={MAX_REQUESTS} kill_every={kill_every}",
        duplicates_allowed(folder, None, killed_mid_request=bool(kill_every)),
        answered=len(answered),
        killed=killed,
        delivered_by_the_run=by_the_run,
        folder_resent=folder,
    )
