"""What would be published says the same thing everywhere: version, license.

The wheel itself (its files, the quickstart run from it outside the source
tree) is checked by ``.ci/run``, which builds and installs it.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import hamustro_logging
from hamustro_logging import transport

ROOT = Path(__file__).resolve().parents[1]

#: A release heading of Keep a Changelog: ``## [0.2.0] - 2026-11-29``.
RELEASE = re.compile(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$", re.MULTILINE)


def test_the_changelog_the_cli_the_package_and_its_metadata_name_one_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    releases = RELEASE.findall(changelog)
    assert releases, "CHANGELOG.md has no '## [X.Y.Z] - YYYY-MM-DD' release heading"
    newest = releases[0][0]
    assert hamustro_logging.__version__ == newest
    done = subprocess.run(
        [sys.executable, "-m", "hamustro_logging", "--version"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=True,
    )  # fmt: skip
    assert done.stdout == f"hamustro-logging {newest}\n"
    sent_as = transport.USER_AGENT  # the User-Agent of every request
    assert sent_as == f"hamustro-logging/{newest}"
    # pyproject.toml takes its version from the package (hatch); an editable
    # install keeps the version it was installed with: reinstall after a bump.
    assert importlib.metadata.version("hamustro-logging") == newest, "reinstall: pip install -e ."


def test_releases_are_newest_first_and_unreleased_is_on_top() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## .*$", changelog, re.MULTILINE)
    assert headings[0] == "## [Unreleased]"
    versions = [tuple(map(int, v.split("."))) for v, _ in RELEASE.findall(changelog)]
    assert versions == sorted(versions, reverse=True)
    assert len(headings) == 1 + len(versions), "a heading that is not a dated release"


def test_the_license_file_is_the_declared_one() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n\nCopyright (c) 2026 hamustro-logging developers\n")
    metadata = importlib.metadata.metadata("hamustro-logging")
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    # PEP 639: the expression supersedes the License classifiers; none may contradict it.
    assert not [c for c in metadata.get_all("Classifier") or [] if c.startswith("License ::")]


def test_the_python_classifiers_are_the_versions_requires_python_admits() -> None:
    metadata = importlib.metadata.metadata("hamustro-logging")
    assert metadata["Requires-Python"] == ">=3.10"
    claimed = sorted(
        c.rsplit(" ", 1)[1]
        for c in metadata.get_all("Classifier") or []
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    )
    assert claimed == ["3.10", "3.11", "3.12", "3.13"]
