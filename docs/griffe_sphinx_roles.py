"""Griffe extension for the API reference: Sphinx roles in docstrings become cross-references.

The package's docstrings name other objects the Sphinx way (``:class:`~pkg.mod.Name```,
``:func:`name```). Markdown has no roles, so each one is rewritten into the marker that
mkdocs-autorefs turns into a link. The marker is *optional*: a name the site does not document
(a private helper, another library's class) renders as plain code instead of failing
``mkdocs build --strict``. A short name is looked up next to the docstring's object first, then
in its module.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_KINDS = "class|func|meth|attr|mod|data|exc|obj|const|type"
_ROLE = re.compile(rf":(?:py:)?(?:{_KINDS}):`(?P<body>[^`]+)`")
_EXPLICIT = re.compile(r"^(?P<title>.+?)\s*<(?P<target>[^>]+)>$")


def _identifier(target: str, obj: griffe.Object) -> str:
    """The full dotted path ``target`` means inside ``obj``'s docstring."""
    if target.startswith("mafl_graph.") or target == "mafl_graph":
        return target
    module = obj if obj.is_module else obj.module
    first, _, rest = target.partition(".")
    scope: griffe.Object | None = obj if obj.is_class or obj.is_module else obj.parent
    while scope is not None:
        member = scope.members.get(first)
        if member is not None:
            # An imported name points at where it is defined, which is what the site documents.
            path = member.target_path if isinstance(member, griffe.Alias) else member.path
            return f"{path}.{rest}" if rest else path
        scope = scope.parent
    return f"{module.path}.{target}"


def rewrite(text: str, obj: griffe.Object) -> str:
    """``text`` with every Sphinx role replaced by an optional autorefs marker."""

    def replace(match: re.Match[str]) -> str:
        body = match["body"].strip()
        explicit = _EXPLICIT.match(body)
        if explicit:
            title, target = explicit["title"], explicit["target"].lstrip("~")
        else:
            target = body.lstrip("~")
            title = target.rsplit(".", 1)[-1] if body.startswith("~") else target
        identifier = html.escape(_identifier(target.rstrip("()"), obj), quote=True)
        code = f"<code>{html.escape(title)}</code>"
        return f'<autoref identifier="{identifier}" optional>{code}</autoref>'

    return _ROLE.sub(replace, text)


class SphinxRoles(griffe.Extension):
    """Rewrite the Sphinx roles of every docstring of the loaded package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[str] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if obj.path in seen:
                continue
            seen.add(obj.path)
            if obj.docstring is not None and ":" in obj.docstring.value:
                obj.docstring.value = rewrite(obj.docstring.value, obj)
            stack.extend(m for m in obj.members.values() if isinstance(m, griffe.Object))
