"""Run every benchmark, one after the other, each in its own process, and print all figures.

    python benchmarks/run_all.py [--quick] [--skip-long] [--only NAME[,NAME...]] [--plot DIR]

``--quick`` gives each script small sizes (a smoke run, figures meaningless).
``--skip-long`` leaves out the scripts that take minutes at full size
(backlog.py, crash_window.py, kill_loop.py); ``--only`` runs just the named
scripts (with or without ``.py``). ``--plot DIR`` has emit_cost.py and
e2e_rate.py write their figures as JSON and draws them into ``DIR`` as
``benchmarks-emit.png`` and ``benchmarks-e2e.png`` (matplotlib, from the
``bench`` extra), each stating the command that made it. Ends with the list
of targets not met; exits non-zero only if a script failed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: Script, and its arguments for a quick smoke run.
SCRIPTS: list[tuple[str, list[str]]] = [
    ("emit_cost.py", ["--quick"]),
    ("emit_instructions.py", ["--quick"]),
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
#: Scripts that write their figures with --json PATH, and the chart --plot draws from them.
CHARTS = {"emit_cost.py": "benchmarks-emit.png", "e2e_rate.py": "benchmarks-e2e.png"}


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
    parser.add_argument(
        "--plot", type=Path, metavar="DIR", help=f"draw {', '.join(CHARTS.values())} into DIR"
    )
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
    if args.plot and not any(script in CHARTS for script, _ in scripts):
        parser.error(f"--plot needs {' or '.join(CHARTS)} among the scripts run")
    if args.plot:
        try:
            import _charts  # noqa: F401 -- fail now, not after the benchmarks ran
        except ImportError as error:
            parser.error(f"--plot needs matplotlib: pip install -e '.[bench]' ({error})")

    failed: list[str] = []
    not_met: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hamustro-bench-") as tmp:
        results: dict[str, Path] = {}
        for script, quick_args in scripts:
            script_args = quick_args if args.quick else []
            print(f"\n=== {script} {' '.join(script_args)}".rstrip(), flush=True)
            if args.plot and script in CHARTS:
                results[script] = Path(tmp) / f"{script}.json"
                script_args = [*script_args, "--json", str(results[script])]
            start = time.perf_counter()
            status, lines = run(script, script_args)
            print(f"({script}: {time.perf_counter() - start:.0f} s)")
            if status != 0:
                failed.append(f"{script} (exit status {status})")
            not_met += [f"{script}: {line.strip()}" for line in lines if line.endswith("not met")]
        if args.plot:
            plot(args.plot, results)

    print("\n=== summary")
    for line in not_met or ["every target met"]:
        print(f"  {line}")
    for script in failed:
        print(f"  FAILED: {script}")
    sys.exit(1 if failed else 0)


def plot(folder: Path, results: dict[str, Path]) -> None:
    """Draw the chart of each script in ``results`` from the JSON it wrote (none if it failed)."""
    import _charts

    command = shlex.join(["python", "benchmarks/run_all.py", *sys.argv[1:]])
    draw = {"emit_cost.py": _charts.emit_chart, "e2e_rate.py": _charts.e2e_chart}
    folder.mkdir(parents=True, exist_ok=True)
    print()
    for script, source in results.items():
        if source.exists():
            figures = json.loads(source.read_text(encoding="utf-8"))
            draw[script](figures, command, folder / CHARTS[script])
            print(f"chart: {folder / CHARTS[script]}")
        else:
            print(f"no chart {CHARTS[script]}: {script} wrote no figures")


if __name__ == "__main__":
    main()
