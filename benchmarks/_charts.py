"""The charts ``run_all.py --plot`` draws from the figures the benchmarks wrote with ``--json``.

Not a benchmark itself. Needs matplotlib (the ``bench`` extra); it draws
with the Agg backend, so no display is needed. Each chart states, in small
text at its foot, the command that made it, the date and the machine.
"""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display: must come before pyplot is imported

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

#: emit_cost.py's handler names, in the order the chart shows them, with their labels.
EMIT_LABELS = {
    "stdlib QueueHandler (bounded, unread)": "stdlib QueueHandler\n(bounded, unread: the floor)",
    "stdlib QueueHandler + QueueListener": "stdlib QueueHandler\n+ QueueListener",
    "HamustroHandler (default)": "HamustroHandler\n(default)",
    "HamustroHandler (schema=2)": "HamustroHandler\n(schema=2)",
    "HamustroHandler (sender=agent) + agent": "HamustroHandler\n(sender=agent) + agent",
    "HamustroHandler (durable=True)": "HamustroHandler\n(durable=True)",
    "logstash-async (in-memory cache)": "python-logstash-async\n(in-memory cache)",
    "logstash-async (SQLite file)": "python-logstash-async\n(SQLite file)",
}
MEDIAN, P90, REFERENCE, HAMUSTRO, CEILING = "#4c72b0", "#a1b9e0", "#8c8c8c", "#4c72b0", "#55a868"
LOOP, CPU = "#4c72b0", "#dd8452"


def footer(command: str) -> str:
    """The small print: the command, today's date (UTC) and the machine it ran on."""
    load = os.getloadavg()[0]
    return (
        f"made by: {command}\n"
        f"{datetime.now(timezone.utc):%Y-%m-%d}, {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}, load {load:.2f} when drawn"
    )


def _finish(figure: Figure, note: str, path: Path) -> None:
    figure.text(0.01, 0.01, note, fontsize=7, color="#555555", va="bottom", family="monospace")
    figure.savefig(path, dpi=150)
    plt.close(figure)


def _times(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.0f}x"


def _style(axes: Axes) -> None:
    axes.spines[["top", "right"]].set_visible(False)
    axes.tick_params(axis="y", length=0)


def emit_chart(figures: dict[str, Any], command: str, path: Path) -> None:
    """Per handler: the loop's wall time per event (the headline), CPU per event, per-call median.

    The ratio on each loop bar is to the first row (the ``QueueHandler``
    floor), taken within each round. A log scale only when one handler
    costs over twenty times another (``durable=True``, logstash's SQLite file).
    """
    rows: dict[str, dict[str, Any]] = {row["name"]: row for row in figures["handlers"]}
    names = [n for n in EMIT_LABELS if n in rows] + [n for n in rows if n not in EMIT_LABELS]
    labels = [EMIT_LABELS.get(n, n) for n in names]
    y = range(len(names))
    height = 0.26
    bars_of = (
        (-height, "loop_us", LOOP, "loop: wall time / events (what the app feels)"),
        (0.0, "cpu_us", CPU, "process CPU / event, until all delivered"),
        (height, "median_us", P90, "one call timed alone: median"),
    )

    figure, axes = plt.subplots(figsize=(8.5, 1.2 + 0.95 * len(names) + 0.9), layout="constrained")
    figure.get_layout_engine().set(rect=(0, 0.08, 1, 0.92))  # type: ignore[union-attr, call-arg]
    shown: list[float] = []
    for offset, key, colour, what in bars_of:
        values = [float(rows[n].get(key) or 0.0) for n in names]
        bars = axes.barh([i + offset for i in y], values, height, color=colour, label=what)
        texts = [f"{v:.1f} µs" for v in values]
        ratios = [rows[n].get(f"{key}_ratio") for n in names]
        texts = [
            f"{text}  ({_times(r)})" if r is not None else text
            for text, r in zip(texts, ratios, strict=True)
        ]
        axes.bar_label(bars, texts, padding=3, fontsize=7 if key != "loop_us" else 8)
        shown += [v for v in values if v > 0]
    largest = max(shown)
    if largest > 20 * min(shown):
        axes.set_xscale("log")
        axes.set_xlim(1, largest * 5)
        axes.set_xlabel("µs per event (log scale)")
    else:
        axes.set_xlim(0, largest * 1.35)
        axes.set_xlabel("µs per event")
    axes.xaxis.set_major_formatter(lambda x, _: f"{x:,.0f} µs")
    axes.set_yticks(list(y), labels, fontsize=9)
    axes.legend(loc="upper right", frameon=False, fontsize=8)  # the floor's bars are short
    axes.invert_yaxis()  # the first row at the top
    _style(axes)
    axes.set_title(
        "Emit cost per handler: what a logging loop costs the app, delivering live\n"
        f"{figures['events']:,} log.info a loop, mean of {figures['rounds']} interleaved "
        "rounds; (x) = / the floor (first row)",
        fontsize=11,
        loc="left",
    )
    _finish(figure, footer(command), path)


def e2e_chart(figures: dict[str, Any], command: str, path: Path) -> None:
    """End-to-end rate against the QueueHandler log.info rate and the collector's ceiling."""
    reference, e2e = figures["queue_handler_rate"], figures["e2e_rate"]
    rows = [
        ("stdlib QueueHandler(SimpleQueue):\nlog.info rate (the reference)", reference, REFERENCE),
        ("HamustroHandler:\nlog.info rate (emit loop only)", figures["emit_rate"], P90),
        ("HamustroHandler: end to end\n(first log.info to last accepted)", e2e, HAMUSTRO),
        (f"collector's ceiling\n({figures['threads']} threads POSTing ready bodies)",
         figures["ceiling"], CEILING),
    ]  # fmt: skip
    figure, axes = plt.subplots(figsize=(8, 4.6), layout="constrained")
    figure.get_layout_engine().set(rect=(0, 0.09, 1, 0.91))  # type: ignore[union-attr, call-arg]
    values = [value for _, value, _ in rows]
    bars = axes.barh(range(len(rows)), values, 0.6, color=[colour for _, _, colour in rows])
    axes.bar_label(
        bars,
        [f"{v:,.0f} ev/s" for v in values],
        padding=3,
        fontsize=8,
        bbox={"facecolor": "white", "edgecolor": "none", "pad": 1},  # over the target lines
    )
    axes.set_yticks(range(len(rows)), [label for label, _, _ in rows], fontsize=9)
    axes.set_xlim(0, max(values) * 1.22)
    # The first row at the top, and a band above it for the targets' labels.
    axes.set_ylim(len(rows) - 0.5, -1.3)
    axes.xaxis.set_major_formatter(lambda x, _: f"{x / 1000:,.0f}k")
    axes.set_xlabel("events per second")
    ratio = figures["target_ratio"] * reference
    for x, y, text in (
        (figures["target_rate"], -1.1, f"target: {figures['target_rate']:,} ev/s"),
        (ratio, -0.75, f"target: {figures['target_ratio']:.0%} of the reference"),
    ):
        axes.axvline(x, color="#c44e52", linestyle="--", linewidth=1, zorder=0)
        axes.annotate(
            text,
            (x, y),
            xytext=(3, 0),
            textcoords="offset points",
            fontsize=7,
            color="#c44e52",
            va="center",
        )
    _style(axes)
    axes.set_title(
        f"End-to-end rate: {figures['events']:,} events, one process, "
        f"queue_size={figures['queue_size']}\n"
        f"median of {figures['repeats']}; end to end = {e2e / reference:.2f}x the reference",
        fontsize=11,
        loc="left",
    )
    _finish(figure, footer(command), path)
