"""A griffe extension for the API reference: the docstrings' reST bits, shown as Markdown.

The library's docstrings are written for ``help()`` and doctest: ``>>>``
examples, ``:class:`~pkg.Name``` roles and ``text::`` literal blocks. Markdown
would show ``>>>`` as nested quotes and the roles as stray text, so before
mkdocstrings renders a docstring this turns doctest runs and literal blocks
into fenced code and a role into inline code. The docstrings themselves stay
as they are (doctested by pytest).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|attr|mod|exc|data|obj):`(~?)([^`]+)`")


def _role(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def to_markdown(text: str) -> str:
    """Fence doctest runs and ``::`` literal blocks; roles become inline code.

    ``tests/test_docs.py`` shows what it makes of each (a doctest here would
    read its own expected ``>>>`` lines as examples).
    """
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith(">>>"):
            pad = _indent(line)
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][pad:] if _indent(lines[i]) >= pad else lines[i].strip())
                i += 1
            out += [" " * pad + "```pycon", *(" " * pad + b for b in block), " " * pad + "```"]
            continue
        if line.rstrip().endswith("::") and i + 1 < len(lines) and not lines[i + 1].strip():
            body_start = i + 2
            while body_start < len(lines) and not lines[body_start].strip():
                body_start += 1
            if body_start < len(lines) and _indent(lines[body_start]) > _indent(line):
                pad = _indent(lines[body_start])
                head = line.rstrip()[:-1]
                out.append(_ROLE.sub(_role, head if not head.endswith(" :") else head[:-2] + ":"))
                out += ["", " " * _indent(line) + "```"]
                j = body_start
                while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) >= pad):
                    j += 1
                while j > body_start and not lines[j - 1].strip():
                    j -= 1
                out += [" " * _indent(line) + ln[pad:] for ln in lines[body_start:j]]
                out += [" " * _indent(line) + "```"]
                i = j
                continue
        out.append(_ROLE.sub(_role, line))
        i += 1
    return "\n".join(out)


class ReSTForMarkdown(griffe.Extension):
    """Rewrite each docstring with :func:`to_markdown` as griffe loads it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
