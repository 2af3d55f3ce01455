"""Every ```python block of README.md and docs/*.md runs, and prints what the text says it prints.

The convention, for whoever writes a page:

- A ```python block that prints something is followed, with nothing but blank lines between, by
  a ```text block holding exactly what it prints (its stdout; trailing spaces and blank lines at
  the end are ignored). A ```python block with no ```text block right after it must print
  nothing. Progress bars and logs go to stderr and are not compared.
- The pages run in the order of ``PAGES`` (the pages not named there after them, by name), all
  in one fresh working directory, each page in its own namespace: a later page may read what an
  earlier one wrote, and says so (the datasets page reads the quickstart's debates, the tuners
  page tunes the file the datasets page writes).
- A block identical to one that already ran (the quickstart and the loop are in the README and
  in the manual) is not run again; its ```text block must match the first run's output.

The blocks run in one fresh Python process, so what the embedded model prints does not depend
on what other tests left in its engine (its outputs are deterministic for a fixed seed on one
machine). The environment is what a user would set: ``MAFL_DATA_DIR`` is the shared data
(``../shared/data`` from the repository root); ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` point
at a loopback OpenAI that chats and fine-tunes (tests/openai_world.py); ``LANGSMITH_ENDPOINT``
and ``LANGSMITH_API_KEY`` at a loopback LangSmith (tests/fake_langsmith.py) whose project
``my-project`` holds the traced debates of run ``exp1``, iteration 1 (scripted models answering
the sums right, traced with LangChain's real tracer), which the LangSmith page reads back.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("langchain_openai")
pytest.importorskip("langsmith")

from fake_http import serve  # noqa: E402
from fake_langsmith import FakeLangSmith  # noqa: E402
from fakes import ScriptedModel  # noqa: E402
from openai_world import KEY, OpenAIWorld  # noqa: E402

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
PAGES = [
    "README.md",
    "docs/library.md",
    "docs/loop.md",
    "docs/datasets.md",
    "docs/tuners.md",
    "docs/providers.md",
    "docs/langsmith.md",
]
# Pages whose snippets are not yet written to this convention, each with what they lack.
LANGSMITH_KEY = "lsv2_pt_0123456789abcdef_docs-snippets"
LANGSMITH_PROJECT, LANGSMITH_RUN = "my-project", "exp1"


@dataclass(frozen=True)
class Snippet:
    page: str
    line: int
    code: str
    expected: str | None
    """The ```text block after it, or None: it must print nothing."""


_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


def snippets(page: str) -> list[Snippet]:
    """The page's ```python blocks, each with the ```text block right after it."""
    lines = (ROOT / page).read_text().splitlines()
    blocks: list[tuple[str, int, int, str]] = []  # language, first line, last line, text
    i = 0
    while i < len(lines):
        opened = _FENCE.match(lines[i])
        if not opened:
            i += 1
            continue
        indent, language = opened.groups()
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        body = [
            line[len(indent) :] if line.startswith(indent) else line for line in lines[i + 1 : end]
        ]
        blocks.append((language, i + 1, end + 1, "\n".join(body)))
        i = end + 1
    found = []
    for k, (language, first, last, code) in enumerate(blocks):
        if language != "python":
            continue
        expected = None
        if k + 1 < len(blocks) and blocks[k + 1][0] == "text":
            between = lines[last : blocks[k + 1][1] - 1]
            if all(not line.strip() for line in between):
                expected = blocks[k + 1][3]
        found.append(Snippet(page, first, textwrap.dedent(code), expected))
    return found


def pages() -> list[str]:
    others = sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "docs").glob("*.md")
        if str(p.relative_to(ROOT)) not in PAGES
    )
    return [page for page in [*PAGES, *others] if snippets(page)]


# Runs in the fresh process: executes the unique blocks in order, one namespace per page, and
# writes what each printed (or the traceback that stopped it) as JSON.
RUNNER = r"""
import contextlib, io, json, sys, traceback
plan = json.load(open(sys.argv[1]))
spaces, out = {}, []
for block in plan:
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            code = compile(block["code"], block["where"], "exec")
            exec(code, spaces.setdefault(block["page"], {}))
    except BaseException:
        out.append({"printed": printed.getvalue(), "error": traceback.format_exc()})
        break
    out.append({"printed": printed.getvalue(), "error": None})
    json.dump(out, open(sys.argv[2], "w"))
json.dump(out, open(sys.argv[2], "w"))
"""


def _normal(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).rstrip()


def _sum_reply(messages) -> str:
    first = messages[0].text
    if "What is the result of " not in first:  # the summarizer's prompt
        return "The others say the same."
    a, b = re.search(r"What is the result of (\d+)\+(\d+)\?", first).groups()
    return f"\\boxed{{{int(a) + int(b)}}}"


def _trace_debates_into(url: str, tmp: Path) -> None:
    """Scripted debates of run ``exp1`` (iteration 1) traced into the loopback LangSmith."""
    from langchain_core.tracers import LangChainTracer
    from langsmith import Client

    from mafl_graph import Arithmetic, Society, create_debate_graph, run_debates

    task = Arithmetic(terms=2, high=20)
    society = Society.from_model(ScriptedModel(reply=_sum_reply), n_agents=3)
    client = Client(api_url=url, api_key=LANGSMITH_KEY, auto_batch_tracing=False)
    tracer = LangChainTracer(project_name=LANGSMITH_PROJECT, client=client)
    run_debates(
        create_debate_graph(society, task),
        task.load("train", 3),
        run_id=LANGSMITH_RUN,
        db_path=tmp / "traced.sqlite",
        metadata={"iteration": 1},
        callbacks=[tracer],
        progress=False,
    )
    tracer.wait_for_futures()


def test_every_snippet_runs_and_prints_what_the_text_says(tmp_path: Path) -> None:
    chosen = [s for page in pages() for s in snippets(page)]
    plan, seen = [], set()
    for s in chosen:  # a block that appears twice runs once
        if s.code not in seen:
            seen.add(s.code)
            plan.append({"page": s.page, "where": f"{s.page}:{s.line}", "code": s.code})
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    langsmith = FakeLangSmith(LANGSMITH_KEY)
    with serve(OpenAIWorld()) as (openai_url, _), serve(langsmith) as (langsmith_url, _):
        _trace_debates_into(langsmith_url, tmp_path)
        env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("LANGSMITH_", "LANGCHAIN_"))
            },
            "MAFL_DATA_DIR": str(DATA),
            "OPENAI_BASE_URL": openai_url + "/v1",
            "OPENAI_API_KEY": KEY,
            "LANGSMITH_ENDPOINT": langsmith_url,
            "LANGSMITH_API_KEY": LANGSMITH_KEY,
            "PYTHONPATH": str(ROOT),
        }
        proc = subprocess.run(
            [sys.executable, "-c", RUNNER, str(tmp_path / "plan.json"), str(tmp_path / "out.json")],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp_path / "out.json").read_text())
    by_code = {}
    for block, result in zip(plan, results, strict=False):
        assert result["error"] is None, f"{block['where']} failed:\n{result['error']}"
        by_code[block["code"]] = result["printed"]
    assert len(results) == len(plan)
    mismatches = []
    for snippet in chosen:
        printed = _normal(by_code[snippet.code])
        expected = _normal(snippet.expected or "")
        if printed != expected:
            mismatches.append(
                f"{snippet.page}:{snippet.line} printed\n{printed or '(nothing)'}\n"
                f"but its text says\n{expected or '(nothing: no ```text block after it)'}"
            )
    assert not mismatches, "\n\n".join(mismatches)
    # The LangSmith page pushed its datasets to the loopback LangSmith.
    assert any(d["name"].startswith(f"{LANGSMITH_RUN}-agent") for d in langsmith.datasets.values())


def test_the_convention_finds_the_blocks_and_their_output() -> None:
    found = {page: snippets(page) for page in pages()}
    assert "README.md" in found and len(found["README.md"]) >= 2
    quickstart = found["README.md"][0]
    assert "run_debates" in quickstart.code and quickstart.expected
