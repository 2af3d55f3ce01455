"""The manual builds as a site: `mkdocs build --strict` fails on a broken link, an anchor that
does not exist, a page left out of the nav, or a docstring mkdocstrings cannot render."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("mkdocs", reason="mkdocs-material and mkdocstrings are in the dev extras")
pytest.importorskip("material", reason="mkdocs-material is in the dev extras")
pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings[python] is in dev")


def test_the_manual_builds_strictly_without_the_network(tmp_path: Path) -> None:
    out = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    # A build that tried to fetch anything (fonts, a social card, an inventory) fails at once.
    env.update(http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", "mkdocs.yml", "-d", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Every page of docs/ is in the site.
    docs = ROOT / "docs"
    pages = sorted(p.relative_to(docs).with_suffix(".html") for p in docs.rglob("*.md"))
    assert [str(p) for p in pages if not (out / p).is_file()] == []
    # The API reference is generated from the docstrings, not left empty.
    society = (out / "api" / "society.html").read_text()
    assert 'id="mafl_graph.society.Society.from_model"' in society
