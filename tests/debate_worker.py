"""A debate run in its own process, so a test can SIGKILL it mid-way and resume it.

usage: python debate_worker.py DB LOG N_PROBLEMS [DIE_AT_CALL] [DIE_AT_WRITE [no-journal]]
Prints one JSON line per problem: id, consensus, correct.

DIE_AT_WRITE: SIGKILL as LangGraph is about to save the DIE_AT_WRITE-th model answer, i.e.
after the model answered and the node returned, before the checkpoint holds the answer.
"no-journal": the same, with the runner's reply journal switched off (for comparison).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import sys
from pathlib import Path

from fakes import EchoTask, ScriptedModel

from mafl_graph import Society, create_debate_graph, run_debates


def reply(messages, agent: int | str | None = None) -> str:
    """An answer; with ``agent``, also a tag that tells this call's reply from every other's."""
    answer = f"\\boxed{{{sum(len(m.text) for m in messages) % 3}}}"
    if agent is None:
        return answer
    tag = hashlib.sha256("|".join(m.text for m in messages).encode()).hexdigest()[:12]
    return f"{answer} (agent {agent}, reply {tag})"


def die_at_write(k: int, db: str) -> None:
    """SIGKILL as the k-th model answer is about to be saved; its text goes to ``db.dying``."""
    from mafl_graph.debate.saver import InlineSqliteSaver

    written = 0
    put_writes = InlineSqliteSaver.put_writes

    def dying_put_writes(self, config, writes, task_id, task_path=""):  # type: ignore[no-untyped-def]
        nonlocal written
        if any(channel == "responses" for channel, _ in writes):
            written += 1
            if written >= k:
                texts = [r["text"] for c, v in writes if c == "responses" for r in v]
                Path(db + ".dying").write_text(json.dumps(texts))
                os.kill(os.getpid(), signal.SIGKILL)
        put_writes(self, config, writes, task_id, task_path)

    InlineSqliteSaver.put_writes = dying_put_writes  # type: ignore[method-assign]


def main() -> None:
    db, log, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    die = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4] != "0" else None
    if len(sys.argv) > 5:
        die_at_write(int(sys.argv[5]), db)
    if len(sys.argv) > 6 and sys.argv[6] == "no-journal":
        from mafl_graph.debate import nodes

        nodes._Journaled.of = classmethod(lambda cls, *args: None)  # type: ignore[assignment]
    model = ScriptedModel(reply=reply, delay=0.02, log_path=log, die_at_call=die)
    society = Society.from_model(model, n_agents=3)
    if len(sys.argv) > 5:  # each agent its own model, so that every reply is told apart
        own = {
            i: ScriptedModel(reply=functools.partial(reply, agent=i), delay=0.02, log_path=log)
            for i in range(3)
        }
        summarizer = functools.partial(reply, agent="summarizer")
        society = society.replace(
            generators=own,
            critics=own,
            summarizer=ScriptedModel(reply=summarizer, delay=0.02, log_path=log),
        )
    task = EchoTask([str(i % 3) for i in range(n)])
    graph = create_debate_graph(society, task, rounds=2)
    results = run_debates(
        graph, task.load("test"), run_id="kill", db_path=db, max_concurrency=2, progress=False
    )
    for r in results:
        print(json.dumps({"id": r.problem_id, "consensus": r.consensus, "correct": r.correct}))


if __name__ == "__main__":
    main()
