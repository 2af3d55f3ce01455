"""Debate five of the paper's arithmetic problems with three gpt-4o-mini agents.

    export OPENAI_API_KEY=sk-...
    python examples/quickstart_openai.py

The key is read by the OpenAI SDK from the environment and is never written anywhere; token
usage and cost per agent and role go to runs/quickstart-openai/usage.json. Run it again and
the finished debates are read back from the checkpoints: no call is paid twice.
"""

import os

from mafl_graph import Arithmetic, Society, create_debate_graph, run_debates, summarize_debates
from mafl_graph.usage import UsageRecorder

if not os.environ.get("OPENAI_API_KEY"):
    raise SystemExit("Set OPENAI_API_KEY first (https://platform.openai.com/api-keys).")

task = Arithmetic()  # the paper's a+b*c+d-e*f with numbers 0-30
# Any `openai:` model works; pass requests_per_second=... to stay under a low rate limit.
society = Society.from_model("openai:gpt-4o-mini", n_agents=3, temperature=1.0, max_tokens=400)
graph = create_debate_graph(society, task, rounds=2, summarize=True)

usage = UsageRecorder("runs/quickstart-openai/usage.json")
results = run_debates(
    graph,
    task.load("test", 5),
    run_id="quickstart-openai",
    db_path="runs/quickstart-openai/debates.sqlite",
    callbacks=[usage],
)
usage.save()
for result in results:
    answers = [r["answer"] for r in result.responses if r["round"] == 2]
    print(
        f"{result.question} = {result.reference}: agents said {answers}, "
        f"consensus {result.consensus} ({'right' if result.correct else 'wrong'})"
    )
print("accuracy", summarize_debates(results, task).accuracy)
print("usage", usage.describe())
