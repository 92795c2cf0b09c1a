"""What the benchmarks share: the collector subprocess, a handler, and the figures table.

Not a benchmark itself (the leading underscore keeps ``run_all.py`` from running it).
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypedDict

from hamustro_logging import HamustroHandler

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

    An event counts as accepted once its line is in the file: the collector
    writes (and flushes) a request's lines before it answers 200.
    """

    def __init__(self, output: Path) -> None:
        self.output = output
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hamustro_logging.collector",
                "--port",
                "0",
                "--secret",
                SECRET,
                "--output",
                str(output),
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


def dead_url() -> str:
    """A loopback URL on a port nobody listens on (bound, then closed)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    return f"http://127.0.0.1:{port}"


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
