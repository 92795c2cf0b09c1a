"""What the benchmarks share: the collector subprocess, a handler, and the figures table.

Not a benchmark itself (the leading underscore keeps ``run_all.py`` from running it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypedDict

from hamustro_logging import HamustroHandler
from hamustro_logging.collector import DevCollector

SECRET = "bench-secret"  # noqa: S105 -- a benchmark's throwaway secret


class Ids(TypedDict):
    device_id: str
    client_id: str
    system_version: str
    product_version: str


IDS: Ids = {
    "device_id": "bench",
    "client_id": "bench",
    "system_version": "1",
    "product_version": "1",
}
#: What every benchmark logs: one event with a small params dict.
EXTRA: dict[str, Any] = {
    "event": "order_placed",
    "user_id": 7,
    "params": {"total": 12, "currency": "EUR"},
}


class Collector:
    """``python -m hamustro_logging.collector`` in a subprocess, writing JSON lines to a file.

    It speaks ``schema`` (1 or 2), as ``--schema`` does.

    An event counts as accepted once its line is in the file: the collector
    writes (and flushes) a request's lines before it answers 200.
    """

    def __init__(self, output: Path, port: int = 0, schema: int = 1) -> None:
        self.output = output
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hamustro_logging.collector",
                "--port",
                str(port),
                "--secret",
                SECRET,
                "--output",
                str(output),
                "--schema",
                str(schema),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stderr is not None
        line = self.process.stderr.readline()
        if "listening on " not in line:
            self.process.kill()
            raise RuntimeError(f"the collector did not start: {line!r}")
        self.url = line.split("listening on ", 1)[1].strip().removesuffix("/api/v1/track")
        self._file: IO[bytes] | None = None
        self._lines = 0

    def lines(self) -> int:
        """Lines in the output file so far (reads only what was appended since the last call)."""
        if self._file is None:
            if not self.output.exists():
                return 0
            self._file = self.output.open("rb")
        while chunk := self._file.read(1 << 20):
            self._lines += chunk.count(b"\n")
        return self._lines

    def wait_lines(self, n: int, timeout: float, poll: float = 0.002) -> float:
        """Wait until the file has ``n`` lines; return the ``time.perf_counter()`` it was seen."""
        deadline = time.perf_counter() + timeout
        while self.lines() < n:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"the collector has {self._lines} of {n} lines after {timeout}s")
            time.sleep(poll)
        return time.perf_counter()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        for stream in (self._file, self.process.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def dev_collector(output: Path | None = None) -> Iterator[DevCollector]:
    """A started ``DevCollector`` on loopback, in this process, keeping no events in memory.

    Its JSON lines go to ``output`` (``/dev/null`` when None). It serves
    from threads of this process, so it shares the interpreter (and the GIL)
    with whatever this process does: the benchmarks that use it say so.
    """
    with open(output or os.devnull, "w", encoding="utf-8") as sink:
        collector = DevCollector(secret=SECRET, output=sink, keep_events=False).start()
        try:
            yield collector
        finally:
            collector.stop()


def dead_url() -> str:
    """A loopback URL on a port nobody listens on (bound, then closed)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def agent_missing() -> str | None:
    """Why the ``agent`` row cannot run with the installed package, or None if it can."""
    from hamustro_logging import HamustroHandler

    folder = Path(tempfile.mkdtemp(prefix="hamustro-bench-probe-"))
    try:
        handler = HamustroHandler(
            collector_url=dead_url(), shared_secret_key=SECRET, queue_dir=str(folder),
            sender="agent", **IDS,
        )  # fmt: skip
        handler.close()
    except TypeError as error:
        return f"HamustroHandler has no sender option ({error})"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    probe = subprocess.run(
        [sys.executable, "-m", "hamustro_logging", "agent", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return "the installed hamustro-logging has no `agent` command"
    return None


@contextlib.contextmanager
def agent(url: str, folder: Path, log: Path, out: dict[str, float]) -> Iterator[None]:
    """``hamustro-logging agent`` on ``folder`` while the block runs; its CPU seconds in ``out``.

    The collector, key and folder go in its ``HAMUSTRO_*`` variables. The
    block starts once the agent said on stderr that it started; its CPU
    until then (the interpreter's start, the imports) is left out of
    ``out["agent_cpu_s"]``. It is stopped with SIGTERM and reaped with
    ``os.wait4`` for its CPU time.
    """
    env = os.environ | {
        "HAMUSTRO_COLLECTOR_URL": url,
        "HAMUSTRO_SHARED_SECRET_KEY": SECRET,
        "HAMUSTRO_QUEUE_DIR": str(folder),
    }
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "hamustro_logging", "agent"], env=env, stderr=stderr
        )
    deadline = time.monotonic() + 60
    while not log.read_text().strip() and process.poll() is None:
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the agent said nothing in 60 s")
        time.sleep(0.01)
    started = _cpu_seconds(process.pid)
    try:
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out["agent_cpu_s"] = usage.ru_utime + usage.ru_stime - started
        if process.returncode not in (0, -signal.SIGTERM):
            print(f"the agent exited with {process.returncode}: see {log}", file=sys.stderr)


def _cpu_seconds(pid: int) -> float:
    """A running process's CPU time so far (user + system, ``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_handler(url: str, folder: Path, **options: Any) -> HamustroHandler:
    options.setdefault("queue_size", 500)
    return HamustroHandler(
        collector_url=url, shared_secret_key=SECRET, queue_dir=str(folder), **IDS, **options
    )


def make_logger(name: str, handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger(f"bench.{name}")
    log.propagate = False
    log.setLevel(logging.INFO)
    for old in list(log.handlers):
        log.removeHandler(old)
    log.addHandler(handler)
    return log


def buffered(handler: HamustroHandler) -> Callable[[], int]:
    """A cheap probe of the events in ``handler``'s journal not yet moved into the store.

    The journal writer's own count (the ``buffered`` of ``stats()``, without
    the queue look-ups ``stats()`` also makes); ``stats()["buffered"]`` if
    the handler has no journal writer where this looks for it.
    """
    writer = getattr(getattr(handler, "_flusher", None), "writer", None)
    if writer is not None:
        return lambda: int(writer.waiting())
    return lambda: int(handler.stats()["buffered"])


def not_on_disk(handler: HamustroHandler, logged: list[int]) -> Callable[[], int]:
    """A probe of the events logged but not committed to disk yet: the crash window.

    ``logged[0]`` is the producer's count of ``log.info`` calls returned;
    from it go the events the handler committed (``queued``, counted after
    the transaction) and those it dropped. Unlike the buffer length this
    includes the chunk the spool thread took out of the buffer and is
    writing. ``queued`` is read before ``logged``, so a sample may count
    the few events logged in between (never fewer than the truth).
    """
    counters = handler.tracker.stats_counters

    def probe() -> int:
        queued, dropped = counters.queued, sum(counters.dropped.values())
        return max(0, logged[0] - queued - dropped)

    return probe


@dataclass
class Sampler:
    """A daemon thread that reads ``probes`` every ``interval`` seconds and keeps the values.

    It sleeps between samples and needs the GIL to take one, so a busy
    producer stretches the interval (``effective_interval`` says by how much).
    """

    probes: dict[str, Callable[[], int]]
    interval: float = 0.001
    values: dict[str, list[int]] = field(default_factory=dict)
    elapsed: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self.values = {name: [] for name in self.probes}
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        start = time.perf_counter()
        probes = [(self.probes[name], self.values[name]) for name in self.probes]
        while not self._stop.is_set():
            for probe, out in probes:
                out.append(probe())
            time.sleep(self.interval)
        self.elapsed = time.perf_counter() - start

    @property
    def samples(self) -> int:
        return min((len(v) for v in self.values.values()), default=0)

    @property
    def effective_interval(self) -> float:
        return self.elapsed / max(1, self.samples)

    def max(self, name: str) -> int:
        return max(self.values[name], default=0)

    def percentile(self, name: str, q: float) -> int:
        values = sorted(self.values[name])
        return values[min(len(values) - 1, int(len(values) * q))] if values else 0


def paced(
    log_one: Callable[[int], None], rate: float | None, duration: float, done: list[int]
) -> tuple[int, float]:
    """Call ``log_one(i)`` for i = 0, 1, ... at ``rate`` calls/s (None: as fast as it can).

    Event ``i`` is due ``i / rate`` seconds after the start; the loop logs
    whatever is due, then sleeps until the next one is (at most 1 ms), so a
    producer that fell behind catches up in a burst, as arrivals at a fixed
    rate would. ``done[0]`` is kept at the count of calls returned. Stops
    after ``duration`` seconds; returns (calls, seconds).
    """
    clock = time.perf_counter
    start = clock()
    i = 0
    while True:
        elapsed = clock() - start
        if elapsed >= duration:
            break
        # At most 256 calls between looks at the clock, so a catch-up burst
        # (or a slow emit) cannot run far past ``duration``.
        target = i + 256 if rate is None else min(int(elapsed * rate) + 1, i + 256)
        if target <= i:
            assert rate is not None
            time.sleep(min((i + 1) / rate - elapsed, 0.001))
            continue
        while i < target:
            log_one(i)
            i += 1
            done[0] = i
    return i, clock() - start


def load() -> str:
    """The load averages (1, 5, 15 min), as ``uptime`` shows them, with the core count."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def handler_options(handler: HamustroHandler) -> str:
    """The handler options these benchmarks are about, as set (and those it may not have)."""
    names = ("durable", "max_buffer", "on_full")
    shown = [f"{n}={getattr(handler, n)!r}" for n in names if hasattr(handler, n)]
    return ", ".join([*shown, f"queue_size={handler.tracker.queue_size}"])


def rss_kib() -> int:
    """This process's resident set size (``VmRSS`` in /proc/self/status), KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def rate(value: float) -> str:
    return f"{value:,.0f} ev/s"


@dataclass
class Row:
    figure: str
    value: str
    target: str = ""
    met: bool | None = None  # None: a figure for context, no target


def print_table(title: str, rows: list[Row]) -> None:
    """A small aligned table: figure, value, target, met / not met."""
    head = Row("figure", "value", "target")
    widths = [max(len(getattr(r, f)) for r in [head, *rows]) for f in ("figure", "value", "target")]
    print(f"\n{title}")
    for row in [head, *rows]:
        verdict = "" if row.met is None else ("met" if row.met else "not met")
        if row is head:
            verdict = "verdict"
        cells = (
            row.figure.ljust(widths[0]),
            row.value.rjust(widths[1]),
            row.target.ljust(widths[2]),
        )
        print(f"  {cells[0]}  {cells[1]}  {cells[2]}  {verdict}".rstrip())
    sys.stdout.flush()
