"""Bytes a debate's SQLite checkpoints take, beside the text that was said in it.

    python benchmarks/checkpoint_size.py [--rounds 2 4 8 16] [--agents 3 9 27] [--reply 600]

Every point of the grid runs one arithmetic problem through the real debate graph (summarizer
on) into a fresh SQLite file through ``run_debates``, with scripted models: each reply is
``--reply`` characters of filler ending in a boxed number, each summary a third longer, so the
sizes do not depend on a model.

``text`` is what was said: for every model call, the turns it added to its conversation (its
new prompt: the question, the other agents' answers or the summary) plus its reply; a turn that
an agent's next round sends again as history is not counted again. ``stored`` is the bytes of
the debate's rows in the checkpointer's two tables (keys and values, as ``length()`` counts
them), ``file`` the database file's size (fixed overhead included), and ``ratio`` stored ÷ text.
Points larger than ``--max-mb`` are skipped and marked as such.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from mafl_graph import Arithmetic, Society, create_debate_graph, run_debates
from mafl_graph.debate.state import Response
from mafl_graph.society import Agent
from mafl_graph.traces import read_traces_sqlite

WORDS = [
    "so",
    "the",
    "sum",
    "of",
    "and",
    "then",
    "we",
    "carry",
    "multiply",
    "add",
    "check",
    "each",
    "step",
    "again",
    "result",
]


class Talker(BaseChatModel):
    """Replies ``length`` characters of words (seeded by what it was sent) and a boxed answer."""

    length: int = 600

    @property
    def _llm_type(self) -> str:
        return "talker"

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        rng = random.Random("".join(m.text for m in messages))
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < self.length:
            words.append(rng.choice(WORDS))
        text = " ".join(words) + f" \\boxed{{{rng.randint(1, 3)}}}"
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])


def said(responses: list[Response]) -> int:
    """Characters of every call's new turns and reply (see the module docstring)."""
    total = 0
    own: dict[int, Response] = {}
    for r in sorted(responses, key=lambda r: (r["round"], r["role"] == "critic")):
        before = own.get(r["agent"]) if r["role"] == "critic" else None
        skip = len(before["messages"]) + 1 if before else 0
        total += sum(len(m["content"]) for m in r["messages"][skip:]) + len(r["text"])
        if r["role"] != "summarizer":
            own[r["agent"]] = r
    return total


def measure(rounds: int, agents: int, reply: int) -> tuple[int, int, int, float]:
    """(text, stored, file bytes, seconds) of one debate."""
    talker, summarizer = Talker(length=reply), Talker(length=reply * 4 // 3)
    society = Society(
        agents=tuple(Agent(f"agent{i}", talker, talker) for i in range(agents)),
        summarizer=summarizer,
    )
    task = Arithmetic()
    graph = create_debate_graph(society, task, rounds=rounds)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "debates.sqlite"
        start = time.perf_counter()
        [result] = run_debates(
            graph, task.load("test", 1), run_id="size", db_path=db, progress=False
        )
        seconds = time.perf_counter() - start
        if not result.ok:
            raise RuntimeError(result.error)
        [trace] = read_traces_sqlite(db, "size")
        text = said([*trace.responses, *trace.summaries])
        conn = sqlite3.connect(db)
        try:
            stored = sum(
                conn.execute(f"SELECT ifnull(sum({cols}), 0) FROM {table}").fetchone()[0]
                for table, cols in _ROW_BYTES.items()
            )
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        return text, stored, db.stat().st_size, seconds


_KEYS = "length(thread_id) + length(checkpoint_ns) + length(checkpoint_id)"
_ROW_BYTES = {
    "checkpoints": f"{_KEYS} + ifnull(length(parent_checkpoint_id), 0) + length(type)"
    " + length(checkpoint) + length(metadata)",
    "writes": f"{_KEYS} + length(task_id) + 8 + length(channel) + ifnull(length(type), 0)"
    " + ifnull(length(value), 0)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--agents", type=int, nargs="+", default=[3, 9, 27])
    parser.add_argument("--reply", type=int, default=600, help="characters per reply")
    parser.add_argument("--max-mb", type=float, default=2000.0, help="skip larger points")
    args = parser.parse_args()
    print(f"\none arithmetic problem per debate, summarizer on, {args.reply}-character replies\n")
    print("| rounds | agents | text chars | stored bytes | file bytes | stored ÷ text | s |")
    print("|---|---|---|---|---|---|---|")
    skipping: set[int] = set()
    for agents in args.agents:
        for rounds in args.rounds:
            if agents in skipping:
                print(f"| {rounds} | {agents} | | over {args.max_mb:g} MB: skipped | | | |")
                continue
            text, stored, size, seconds = measure(rounds, agents, args.reply)
            print(
                f"| {rounds} | {agents} | {text:,} | {stored:,} | {size:,} | "
                f"{stored / text:.2f} | {seconds:.1f} |"
            )
            if stored > args.max_mb * 1e6 / 4:  # the next point (twice the rounds) is larger
                skipping.add(agents)


if __name__ == "__main__":
    main()
