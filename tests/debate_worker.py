"""A debate run in its own process, so a test can SIGKILL it mid-way and resume it.

usage: python debate_worker.py DB LOG N_PROBLEMS [DIE_AT_CALL]
Prints one JSON line per problem: id, consensus, correct.
"""

from __future__ import annotations

import json
import sys

from fakes import EchoTask, ScriptedModel

from mafl_graph import Society, create_debate_graph, run_debates


def reply(messages) -> str:
    return f"\\boxed{{{sum(len(m.text) for m in messages) % 3}}}"


def main() -> None:
    db, log, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    die = int(sys.argv[4]) if len(sys.argv) > 4 else None
    model = ScriptedModel(reply=reply, delay=0.02, log_path=log, die_at_call=die)
    task = EchoTask([str(i % 3) for i in range(n)])
    graph = create_debate_graph(Society.from_model(model, n_agents=3), task, rounds=2)
    results = run_debates(
        graph, task.load("test"), run_id="kill", db_path=db, max_concurrency=2, progress=False
    )
    for r in results:
        print(json.dumps({"id": r.problem_id, "consensus": r.consensus, "correct": r.correct}))


if __name__ == "__main__":
    main()
