"""The docs stand on their own: commands that exist, links that stay in the repository.

Every ``hamustro-logging ...`` command in a shell block of ``README.md`` or
``docs/`` must name a subcommand and options that the CLI's own ``--help``
lists (run as a subprocess, as a reader would). No file a user reads links to a
path outside the repository (the build-time reference folder beside it is for building the project,
not for users) or to a repository file that does not exist.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").rglob("*.md"))
SHOWN = [ROOT / "README.md", *DOCS]
READ_BY_USERS = [
    *SHOWN,
    ROOT / "CHANGELOG.md",
    *sorted((ROOT / "hamustro_logging").rglob("*.py")),
    *sorted((ROOT / "hamustro_logging").rglob("*.pyi")),
]

SHELL_BLOCK = re.compile(r"^```(?:sh|bash|shell|console)[ \t]*\n(.*?)^```", re.M | re.S)
OPERATORS = {"&&", "||", "|", ";", "&", "(", ")"}
REDIRECTS = {">", ">>", "<", "2>", "2>&1"}


def _help(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "hamustro_logging", *args, "--help"],
        capture_output=True, text=True, timeout=60, check=True, cwd=ROOT,
    )  # fmt: skip
    return done.stdout


@cache
def cli_options() -> dict[str, set[str]]:
    """Subcommand -> its options, from ``--help``; ``""`` holds the top-level options."""
    top = _help()
    listing = top.split("positional arguments:", 1)[1].split("options:", 1)[0]
    commands = re.findall(r"^    ([a-z][a-z-]*)", listing, re.M)
    assert "status" in commands and "collector" in commands, top
    options = {"": set(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", top.split("options:")[1]))}
    for command in commands:
        text = _help(command).split("options:", 1)[1]
        options[command] = set(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", text))
    return options


def _simple_commands(line: str) -> list[list[str]]:
    """The words of each simple command on a shell line (operators and redirections dropped)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = [[]]
    skip_next = False
    for token in lexer:
        if skip_next:
            skip_next = False
        elif token in OPERATORS:
            commands.append([])
        elif token in REDIRECTS:
            skip_next = True
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def _cli_words(words: list[str]) -> list[str] | None:
    """The arguments given to ``hamustro-logging`` by this command, or None if it is another."""
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):  # VAR=value cmd
        words = words[1:]
    if not words:
        return None
    program = Path(words[0]).name
    if program == "hamustro-logging":
        return words[1:]
    if re.fullmatch(r"python[0-9.]*", program) and words[1:2] == ["-m"]:
        if words[2:3] == ["hamustro_logging"]:
            return words[3:]
        if words[2:3] == ["hamustro_logging.collector"]:
            return ["collector", *words[3:]]
    return None


def shown_commands() -> list[tuple[str, list[str]]]:
    """(where, arguments) of every CLI command in a shell block of the README and docs."""
    found = []
    for path in SHOWN:
        for block in SHELL_BLOCK.findall(path.read_text(encoding="utf-8")):
            for line in block.splitlines():
                line = line.strip().removeprefix("$ ")
                for words in _simple_commands(line):
                    args = _cli_words(words)
                    if args is not None:
                        found.append((f"{path.relative_to(ROOT)}: {line}", args))
    return found


def test_the_docs_show_the_cli() -> None:
    shown = {args[0] for _, args in shown_commands() if args and not args[0].startswith("-")}
    # Each subcommand is shown at least once where a reader looks for it.
    assert shown >= {"status", "flush", "send-test", "export", "retry-rejected", "rebind"}
    assert "collector" in shown


@pytest.mark.parametrize(("where", "args"), shown_commands(), ids=lambda v: str(v)[:60])
def test_every_command_shown_exists_in_the_cli_help(where: str, args: list[str]) -> None:
    options = cli_options()
    words = [w.strip("[]") for w in args if w.strip("[]")]
    command = next((w for w in words if not w.startswith("-")), None)
    before = words if command is None else words[: words.index(command)]
    for word in before:
        assert word.split("=", 1)[0] in options[""], f"{where}: no top-level option {word}"
    if command is None:
        return
    assert command in options, f"{where}: `{command}` is not a hamustro-logging subcommand"
    for word in words[words.index(command) + 1 :]:
        if word.startswith("-"):
            name = word.split("=", 1)[0]
            assert name in options[command], f"{where}: `{command}` has no option {name}"


def test_the_help_parser_finds_every_subcommand() -> None:
    options = cli_options()
    assert {"status", "flush", "send-test", "export", "retry-rejected", "rebind"} <= set(options)
    assert "--json" in options["status"] and "--aside" in options["export"]
    assert "--port" in options["collector"]  # the collector's own parser
    assert "--no-such-option" not in options["flush"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("hamustro-logging status --client-id shop", [["status", "--client-id", "shop"]]),
        ("export HAMUSTRO_X=1 && hamustro-logging flush", [["flush"]]),
        ("hamustro-logging export --aside > aside.jsonl", [["export", "--aside"]]),
        ("python3 -m hamustro_logging.collector --port 80", [["collector", "--port", "80"]]),
        ("python -m hamustro_logging --version  # a comment", [["--version"]]),
        ("pip install -e '.[docs]' && mkdocs serve", []),
    ],
)  # fmt: skip
def test_commands_are_read_from_shell_lines(line: str, expected: list[list[str]]) -> None:
    got = [args for words in _simple_commands(line) if (args := _cli_words(words)) is not None]
    assert got == expected


# -- links -----------------------------------------------------------------------------

MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)")
HTML_LINK = re.compile(r"""(?:href|src)\s*=\s*["']([^"']+)["']""")
#: A repository file named in the text (``docs/protocol.md``, ``tests/faults/test_tls.py``).
REPO_FILE = re.compile(
    r"(?<![\w./-])((?:docs|examples|benchmarks|tests|proto)/[\w./-]*\.(?:md|py|proto))"
)
OUTSIDE = re.compile(r"\.\./shared|shared/spec|\bspec/(?:collector|pseudo-client)|file://")


@pytest.mark.parametrize("path", READ_BY_USERS, ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_links_outside_the_repository(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    bad = [m.group(0) for m in OUTSIDE.finditer(text)]
    assert not bad, f"{path.relative_to(ROOT)} points outside the repository: {bad}"
    targets = MARKDOWN_LINK.findall(text) + HTML_LINK.findall(text) if path.suffix == ".md" else []
    for target in targets:
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a public page (https://...) or an anchor on the same page
        resolved = (path.parent / target.split("#", 1)[0]).resolve()
        where = f"{path.relative_to(ROOT)} links to {target!r}"
        assert resolved.is_relative_to(ROOT), f"{where}, outside the repository"
        assert resolved.exists(), f"{where}, which does not exist"
    for named in REPO_FILE.findall(text):
        assert (ROOT / named).exists(), f"{path.relative_to(ROOT)} names {named}, which is missing"


def test_the_readme_links_into_the_docs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = set(MARKDOWN_LINK.findall(readme))
    assert {"docs/getting-started.md", "docs/handler.md", "docs/protocol.md"} <= linked
    assert "mkdocs serve" in readme


def test_rest_docstrings_become_markdown() -> None:
    pytest.importorskip("griffe")  # the docs extra
    spec = importlib.util.spec_from_file_location("griffe_rst", ROOT / "docs" / "griffe_rst.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = "See :class:`~a.b.C`, :func:`f`.\n\n>>> 1 + 1\n2\n\nFrom a shell::\n\n    run it\n\nEnd."
    assert module.to_markdown(text).splitlines() == [
        "See `C`, `f`.", "", "```pycon", ">>> 1 + 1", "2", "```", "",
        "From a shell:", "", "```", "run it", "```", "", "End.",
    ]  # fmt: skip


def test_the_options_table_lists_every_option() -> None:
    from hamustro_logging.handler import HANDLER_OPTIONS
    from hamustro_logging.tracker import TRACKER_OPTIONS

    page = (ROOT / "docs" / "handler.md").read_text(encoding="utf-8")
    table = page.split("## Options", 1)[1].split("\n## ", 1)[0]
    listed = set()
    for row in table.splitlines():
        if row.startswith("| `"):
            listed |= set(re.findall(r"`(\w+)`", row.split("|")[1]))
    assert set(TRACKER_OPTIONS) | set(HANDLER_OPTIONS) <= listed
