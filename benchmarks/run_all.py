"""Run every benchmark, one after the other, each in its own process, and print all figures.

    python benchmarks/run_all.py [--quick] [--skip-long] [--only NAME[,NAME...]]

``--quick`` gives each script small sizes (a smoke run, figures meaningless).
``--skip-long`` leaves out the scripts that take minutes at full size
(backlog.py, crash_window.py, kill_loop.py); ``--only`` runs just the named
scripts (with or without ``.py``). Ends with the list of targets not met;
exits non-zero only if a script failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: Script, and its arguments for a quick smoke run. emit_cost.py has no --quick.
SCRIPTS: list[tuple[str, list[str]]] = [
    ("emit_cost.py", ["--rounds", "3", "--calls", "500"]),
    ("e2e_rate.py", ["--quick"]),
    ("backlog.py", ["--quick"]),
    ("multiprocess.py", ["--quick"]),
    ("dead_collector.py", ["--quick"]),
    ("sustained.py", ["--quick"]),
    ("crash_window.py", ["--quick"]),
    ("kill_loop.py", ["--quick"]),
]
#: Scripts that take minutes at full size: --skip-long leaves them out.
LONG = {"backlog.py", "crash_window.py", "kill_loop.py"}


def run(script: str, args: list[str]) -> tuple[int, list[str]]:
    """Run one script, echoing its output as it comes; (exit status, lines printed)."""
    lines: list[str] = []
    with subprocess.Popen(
        [sys.executable, str(HERE / script), *args], stdout=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            print(line, end="", flush=True)
            lines.append(line.rstrip())
    return process.returncode, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--skip-long", action="store_true", help=f"leave out {', '.join(LONG)}")
    parser.add_argument("--only", help="comma-separated script names: run just these")
    args = parser.parse_args()
    scripts = SCRIPTS
    if args.only:
        wanted = {n.strip().removesuffix(".py") + ".py" for n in args.only.split(",")}
        unknown = wanted - {script for script, _ in SCRIPTS}
        if unknown:
            parser.error(f"no such benchmark: {', '.join(sorted(unknown))}")
        scripts = [(script, a) for script, a in SCRIPTS if script in wanted]
    if args.skip_long:
        scripts = [(script, a) for script, a in scripts if script not in LONG]

    failed: list[str] = []
    not_met: list[str] = []
    for script, quick_args in scripts:
        print(f"\n=== {script} {' '.join(quick_args) if args.quick else ''}".rstrip(), flush=True)
        start = time.perf_counter()
        status, lines = run(script, quick_args if args.quick else [])
        print(f"({script}: {time.perf_counter() - start:.0f} s)")
        if status != 0:
            failed.append(f"{script} (exit status {status})")
        not_met += [f"{script}: {line.strip()}" for line in lines if line.endswith("not met")]

    print("\n=== summary")
    for line in not_met or ["every target met"]:
        print(f"  {line}")
    for script in failed:
        print(f"  FAILED: {script}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
