"""A griffe extension: the reST idioms of torch-rln's docstrings, as Markdown for the site.

The docstrings are written for ``help()`` and editors as much as for the site, in the
reST-flavoured style of torch's own (``double backticks``, ``:class:`X```, ``.. math::``).
mkdocstrings renders Markdown, so before it does, this extension rewrites in every
docstring of the package:

* ``.. math::`` blocks into ``$$ ... $$`` display math (an ``aligned`` environment when the
  block aligns on ``&`` or breaks lines with ``\\\\``), and ``:math:`x``` into ``\\(x\\)``;
  pymdownx.arithmatex hands both to MathJax;
* ``:class:``, ``:func:``, ``:meth:``, ``:mod:``, ``:attr:`` roles into optional
  cross-references: a link where the target is documented on the site, code where not
  (``~a.b.C`` shows ``C``);
* a paragraph ending in ``::`` followed by an indented literal block (``Example::``) into
  the paragraph ending in ``:`` and a fenced Python block.

Double backticks need nothing: Markdown reads ````x```` as code too. The source of every
docstring is left as it is.
"""

from __future__ import annotations

import html
import re
import textwrap
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(class|func|meth|mod|attr|data|obj|exc):`(~?)([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _block(lines: list[str], start: int, base: int) -> tuple[list[str], int]:
    """The indented block after ``lines[start - 1]`` (deeper than ``base``): its lines, and
    the index of the first line after it."""
    end = start
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > base):
        end += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return lines[start:end], end


def _math_block(body: list[str], pad: str) -> list[str]:
    tex = textwrap.dedent("\n".join(body)).strip("\n").splitlines()
    aligned = any("&" in line or line.rstrip().endswith("\\\\") for line in tex)
    inner = ["\\begin{aligned}", *tex, "\\end{aligned}"] if aligned else tex
    return [pad + "$$", *(pad + line for line in inner), pad + "$$"]


def convert(text: str, resolve: Any = None) -> str:
    """``text`` (a docstring) with its reST idioms rewritten as Markdown (see the module docstring).
    ``resolve(name)`` gives the full path a role's name stands for, where it can."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        base = _indent(line)
        if stripped == ".. math::":
            body, i = _block(lines, i + 1, base)
            out.extend(_math_block(body, " " * base))
            continue
        if stripped.endswith("::") and not stripped.startswith(".."):
            body, end = _block(lines, i + 1, base)
            if any(b.strip() for b in body):
                head = line.rstrip()[:-2].rstrip()
                out.append(head + ":" if head.strip() else "")
                out.append("")
                pad = " " * base
                out.append(pad + "```python")
                out.extend(pad + b if b.strip() else "" for b in textwrap.dedent("\n".join(body)).splitlines())
                out.append(pad + "```")
                i = end
                continue
        out.append(line)
        i += 1
    result = "\n".join(out)
    result = _MATH_ROLE.sub(lambda m: f"\\({m.group(1)}\\)", result)
    return _ROLE.sub(lambda m: _reference(m.group(1), m.group(2) == "~", m.group(3), resolve), result)


def _reference(role: str, short: bool, name: str, resolve: Any) -> str:
    shown = name.rsplit(".", 1)[-1] if short else name
    if role in ("func", "meth"):
        shown += "()"
    target = name
    if resolve is not None:
        try:
            target = resolve(name)
        except Exception:  # noqa: BLE001 - a name griffe cannot place stays as written
            target = name
    return f'<autoref identifier="{html.escape(target)}" optional><code>{html.escape(shown)}</code></autoref>'


class RestMarkup(griffe.Extension):
    """Rewrite the docstrings of a package once it is loaded (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()
        self._walk(pkg, seen)

    def _walk(self, obj: griffe.Object, seen: set[int]) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value, obj.resolve)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member, seen)  # type: ignore[arg-type]
