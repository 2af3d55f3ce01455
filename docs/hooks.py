"""MkDocs hook: the table of ``mafl_graph``'s exported names, read from the package itself.

``api/mafl_graph.md`` holds the marker ``<!-- exports -->``; this hook replaces it with one row
per API page, each name of ``mafl_graph._EXPORTS`` linked to where the reference documents
it. So a name added to the public API appears here at the next build, and a name whose module
has no API page fails ``mkdocs build --strict`` instead of going undocumented.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path
from typing import Any

import griffe

MARKER = "<!-- exports -->"


def _exports(init: Path) -> dict[str, str]:
    """``_EXPORTS`` of ``mafl_graph/__init__.py`` (name -> module), read without importing."""
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in targets):
                assert node.value is not None
                return dict(ast.literal_eval(node.value))
    raise RuntimeError(f"{init} defines no _EXPORTS")


def _canonical(package: griffe.Module, module: str, name: str) -> str:
    """Where ``name``, exported from ``module``, is defined (the API reference knows it there)."""
    try:
        obj = package[module.removeprefix("mafl_graph.")][name] if module != "mafl_graph" else None
        if isinstance(obj, griffe.Alias):
            return obj.final_target.path
        if obj is not None:
            return obj.path
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        pass
    return f"{module}.{name}"


def _page(path: str, pages: set[str]) -> str | None:
    """The API page (module path) of the longest module prefix of ``path`` that has one."""
    parts = path.split(".")
    for end in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:end]) in pages:
            return ".".join(parts[:end])
    return None


def exports_table(root: Path, api_dir: Path) -> str:
    """The Markdown table of every exported name, grouped by the API page documenting it."""
    exports = _exports(root / "mafl_graph" / "__init__.py")
    package = griffe.load("mafl_graph", search_paths=[str(root)], resolve_aliases=False)
    assert isinstance(package, griffe.Module)
    pages = {f"mafl_graph.{p.stem}" for p in api_dir.glob("*.md")}
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for name, module in exports.items():
        target = _canonical(package, module, name)
        groups[_page(target, pages) or module].append((name, target))
    rows = ["| documented in | names |", "|---|---|"]
    for where in sorted(groups):
        title = f"[`{where}`]({where.removeprefix('mafl_graph.')}.md)"
        if where not in pages:
            title = f"`{where}`"
        names = sorted(groups[where], key=lambda item: item[0].lower())
        rows.append(f"| {title} | {', '.join(f'[`{n}`][{t}]' for n, t in names)} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER not in markdown:
        return markdown
    root = Path(config["config_file_path"]).parent
    api_dir = Path(page.file.abs_src_path).parent
    return markdown.replace(MARKER, exports_table(root, api_dir))
