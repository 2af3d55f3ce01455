"""Bytes a debate's SQLite checkpoints take, beside the text that was said in it.

    python benchmarks/checkpoint_size.py [--rounds 2 4 8 16] [--agents 3 9 27] [--reply 600]
                                         [--question CHARS] [--postgres]

Every point of the grid runs one arithmetic problem through the real debate graph (summarizer
on) into a fresh SQLite file through ``run_debates``, with scripted models: each reply is
``--reply`` characters of filler ending in a boxed number, each summary a third longer, so the
sizes do not depend on a model.

``text`` is what was said: for every model call, the turns it added to its conversation (its
new prompt: the question, the other agents' answers or the summary) plus its reply; a turn that
an agent's next round sends again as history is not counted again. ``stored`` is the bytes of
the debate's rows in the checkpointer's two tables (keys and values, as ``length()`` counts
them), ``file`` the database file's size (fixed overhead included), and ``ratio`` stored ÷ text.
Points larger than ``--max-mb`` are skipped and marked as such. ``--question`` makes the
question that many characters long (``1+1+…``). ``--postgres`` stores into a local Postgres
(``pgserver``) through ``AsyncPostgresSaver`` instead and counts ``pg_column_size`` of the
debate's rows in its three tables (values as TOAST compresses them); ``file`` is then blank.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from mafl_graph import Arithmetic, Society, arun_debates, create_debate_graph, run_debates
from mafl_graph.debate.state import Response
from mafl_graph.society import Agent
from mafl_graph.tasks.base import Problem
from mafl_graph.traces import aread_traces, read_traces_sqlite

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


def debate(rounds: int, agents: int, reply: int, question: int | None) -> tuple[Any, Problem]:
    """The graph and the problem of one grid point."""
    talker, summarizer = Talker(length=reply), Talker(length=reply * 4 // 3)
    society = Society(
        agents=tuple(Agent(f"agent{i}", talker, talker) for i in range(agents)),
        summarizer=summarizer,
    )
    task = Arithmetic()
    [problem] = task.load("test", 1)
    if question is not None:
        terms = max(question // 2, 1)
        problem = Problem(problem.id, "+".join(["1"] * terms), str(terms))
    return create_debate_graph(society, task, rounds=rounds), problem


def measure(
    rounds: int, agents: int, reply: int, question: int | None
) -> tuple[int, int, int, float]:
    """(text, stored, file bytes, seconds) of one debate in SQLite."""
    graph, problem = debate(rounds, agents, reply, question)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "debates.sqlite"
        start = time.perf_counter()
        [result] = run_debates(graph, [problem], run_id="size", db_path=db, progress=False)
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


def measure_postgres(
    uri: str, rounds: int, agents: int, reply: int, question: int | None
) -> tuple[int, int, int, float]:
    """(text, stored, 0, seconds) of one debate in Postgres."""
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    graph, problem = debate(rounds, agents, reply, question)
    run_id = f"size-{rounds}-{agents}"

    async def run() -> tuple[int, int, float]:
        async with AsyncPostgresSaver.from_conn_string(uri) as saver:
            await saver.setup()
            start = time.perf_counter()
            [result] = await arun_debates(
                graph, [problem], run_id=run_id, checkpointer=saver, progress=False
            )
            seconds = time.perf_counter() - start
            if not result.ok:
                raise RuntimeError(result.error)
            [trace] = await aread_traces(saver, run_id)
            stored = 0
            async with saver.conn.cursor() as cur:
                for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"):
                    await cur.execute(
                        f"SELECT coalesce(sum(pg_column_size(t.*)), 0) AS n FROM {table} t "
                        "WHERE thread_id LIKE %s",
                        (f"{run_id}/%",),
                    )
                    row: Any = await cur.fetchone()
                    stored += int(row["n"])
            return said([*trace.responses, *trace.summaries]), stored, seconds

    text, stored, seconds = asyncio.run(run())
    return text, stored, 0, seconds


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
    parser.add_argument("--question", type=int, help="characters of the question")
    parser.add_argument("--postgres", action="store_true", help="a local Postgres (pgserver)")
    args = parser.parse_args()
    store = "Postgres" if args.postgres else "SQLite"
    print(
        f"\none arithmetic problem per debate, summarizer on, {args.reply}-character replies, "
        f"{store}\n"
    )
    with contextlib.ExitStack() as stack:
        one: Any = measure
        if args.postgres:
            import pgserver

            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            server = pgserver.get_server(tmp, cleanup_mode="stop")
            stack.callback(server.cleanup)
            one = functools.partial(measure_postgres, server.get_uri())
        grid(args, one)


def grid(args: argparse.Namespace, one: Any) -> None:
    """One table row per point: ``one(rounds, agents, reply, question)``."""
    print("| rounds | agents | text chars | stored bytes | file bytes | stored ÷ text | s |")
    print("|---|---|---|---|---|---|---|")
    skipping: set[int] = set()
    for agents in args.agents:
        for rounds in args.rounds:
            if agents in skipping:
                print(f"| {rounds} | {agents} | | over {args.max_mb:g} MB: skipped | | | |")
                continue
            text, stored, size, seconds = one(rounds, agents, args.reply, args.question)
            print(
                f"| {rounds} | {agents} | {text:,} | {stored:,} | {f'{size:,}' if size else ''} | "
                f"{stored / text:.2f} | {seconds:.1f} |",
                flush=True,
            )
            if stored > args.max_mb * 1e6 / 4:  # the next point (twice the rounds) is larger
                skipping.add(agents)


if __name__ == "__main__":
    main()
