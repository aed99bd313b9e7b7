"""Griffe extension for the API reference: the docstrings' reST roles as links.

The docstrings are written for both ``help()`` and the site, with Sphinx-style cross-references
(``:func:`fuse```, ``:class:`~fused.base.FusedModule```, ``:data:`title <fused.x.Y>```).
mkdocstrings renders docstrings as Markdown, so this extension turns each role into an optional
mkdocs-autorefs reference: a link where the target is on the site, plain code where it is not
(a private helper, a torch object). A reST ``::`` before a literal block becomes ``:``.
A docstring whose lines after the first are all indented code keeps that indentation (Python's
``inspect.cleandoc`` would make the code a paragraph). Module and class attributes documented Sphinx-style, by ``#:`` comment lines above them, get
those lines as their docstring, so they are shown and can be linked to.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|const):`(?P<body>[^`]+)`")
LITERAL = re.compile(r"(\S)::$", re.M)


def _candidates(obj, target: str):
    yield target
    scope = obj
    while scope is not None:  # the object itself, its class, its module, its packages
        yield f"{scope.path}.{target}"
        scope = scope.parent


def _resolve(obj, loader, target: str) -> str:
    for path in _candidates(obj, target):
        try:
            found = loader.modules_collection[path]
        except Exception:  # not loaded, not a member, an alias that does not resolve
            continue
        return found.path
    return target


def _comment_docstring(attr) -> str | None:
    """The ``#:`` lines right above ``attr``'s first line, without the marker."""
    try:
        lines = Path(attr.filepath).read_text(encoding="utf-8").splitlines()
    except (OSError, TypeError, ValueError):
        return None
    found, i = [], (attr.lineno or 1) - 2
    while i >= 0 and lines[i].strip().startswith("#:"):
        found.insert(0, lines[i].strip()[2:].strip())
        i -= 1
    return "\n".join(found) or None


def _indented_code_kept(obj) -> str | None:
    """The docstring of ``obj`` with its indentation measured from the opening quotes, when
    ``inspect.cleandoc`` would have removed the indentation of code that follows the first line."""
    doc = obj.docstring
    if not doc.lineno or not doc.endlineno or obj.is_attribute:
        return None
    try:
        lines = Path(obj.filepath).read_text(encoding="utf-8").splitlines()[doc.lineno - 1:doc.endlineno]
    except (OSError, TypeError, ValueError):
        return None
    first, rest = lines[0], lines[1:]
    margin = len(first) - len(first.lstrip())
    body = [line for line in rest if line.strip() and line.strip() not in ('"""', "'''")]
    if not body or min(len(line) - len(line.lstrip()) for line in body) <= margin:
        return None  # cleandoc removed nothing that mattered
    text = "\n".join([first.strip()] + [line[margin:] for line in rest])
    text = re.sub(r'^[rRbBuU]*("""|\'\'\')', "", text)
    text = re.sub(r'("""|\'\'\')\s*$', "", text)
    return text.strip("\n").rstrip()


class Roles(griffe.Extension):
    """Rewrites every loaded object's docstring (see the module docstring)."""

    def on_package(self, *, pkg, loader, **kwargs):  # the top module gets no on_object
        self.on_object(obj=pkg, loader=loader)

    def on_object(self, *, obj, loader, **kwargs):
        if obj.docstring is None and obj.is_attribute:
            text = _comment_docstring(obj)
            if text:
                obj.docstring = griffe.Docstring(text, parent=obj)
        if obj.docstring is None:
            return
        kept = _indented_code_kept(obj)
        if kept is not None:
            obj.docstring.value = kept

        def link(match: re.Match) -> str:
            body = match["body"].strip()
            explicit = re.fullmatch(r"(?P<title>.+?)\s*<(?P<target>[^>]+)>", body)
            if explicit:
                title, target = explicit["title"], explicit["target"]
            else:
                target = body.lstrip("~.")
                title = target.rsplit(".", 1)[-1] if body.startswith("~") else target
            if target.endswith("()"):
                target = target[:-2]
            identifier = _resolve(obj, loader, target)
            return f'<autoref identifier="{identifier}" optional><code>{html.escape(title)}</code></autoref>'

        obj.docstring.value = LITERAL.sub(r"\1:", ROLE.sub(link, obj.docstring.value))
