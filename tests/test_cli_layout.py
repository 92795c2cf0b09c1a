"""The command line's source stays split by job: a module per command, each one screenful or a few.

Issue 20's measures, for the ``hamustro_logging.cli`` package: no module over
800 lines, no class over 400, every module opening with a docstring that
says its job and who calls what, and every command of ``--help`` run by a
module of its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

from hamustro_logging import cli

PACKAGE = Path(cli.__file__).parent
MODULES = sorted(PACKAGE.glob("*.py"))


def test_no_module_over_800_lines_and_no_class_over_400() -> None:
    assert len(MODULES) > 2
    for path in MODULES:
        source = path.read_text(encoding="utf-8")
        assert len(source.splitlines()) <= 800, path.name
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef):
                assert node.end_lineno is not None
                assert node.end_lineno - node.lineno + 1 <= 400, f"{path.name}: {node.name}"


def test_every_module_says_its_job_and_who_calls_what() -> None:
    for path in MODULES:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        assert doc, path.name
        assert "Who calls what" in doc, path.name


def test_every_command_has_a_module_of_its_own() -> None:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    commands = set(sub.choices or ())  # the subparsers by name
    own = {module.NAME: module.__name__ for module in cli._COMMANDS}
    assert commands - set(own) == {"collector"}  # the collector's own main takes the rest
    for name, module in own.items():
        assert module == "hamustro_logging.cli." + name.replace("-", "_")
