"""The README's quickstart works as written (it starts its own collector)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_delivers_three_events(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "the collector accepted 3 events" in done.stdout
    assert "nr=2 order_placed" in done.stdout
    assert "log line: INFO shop: an ordinary log line" in done.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written to the working directory
