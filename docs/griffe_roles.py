"""Griffe extension for the API reference: the docstrings' reST roles as links.

The docstrings are written for both ``help()`` and the site, with Sphinx-style cross-references
(``:func:`fuse```, ``:class:`~fused.base.FusedModule```, ``:data:`title <fused.x.Y>```).
mkdocstrings renders docstrings as Markdown, so this extension turns each role into an optional
mkdocs-autorefs reference: a link where the target is on the site, plain code where it is not
(a private helper, a torch object). A reST ``::`` before a literal block becomes ``:``.
"""

from __future__ import annotations

import html
import re

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


class Roles(griffe.Extension):
    """Rewrites every loaded object's docstring (see the module docstring)."""

    def on_object(self, *, obj, loader, **kwargs):
        if obj.docstring is None:
            return

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
