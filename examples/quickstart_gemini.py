"""Debate five of the paper's arithmetic problems with three Gemini 2.0 Flash agents.

    export GOOGLE_API_KEY=...   # from https://aistudio.google.com/apikey
    python examples/quickstart_openai.py

The key is read by the Google Gen AI SDK from the environment and is never written anywhere;
token usage and cost per agent and role go to runs/quickstart-gemini/usage.json. Run it again and
the finished debates are read back from the checkpoints: no call is paid twice.
"""

import os

from mafl_graph import Arithmetic, Society, create_debate_graph, run_debates, summarize_debates
from mafl_graph.usage import UsageRecorder

if not (os.environ.get("GOOGLE_API_KEY") or os.environ.get("GEMINI_API_KEY")):
    raise SystemExit("Set GOOGLE_API_KEY first (https://aistudio.google.com/apikey).")

task = Arithmetic()  # the paper's a+b*c+d-e*f with numbers 0-30
# Any `google_genai:` model works; on the free tier pass requests_per_second=0.2 (15 a minute).
society = Society.from_model(
    "google_genai:gemini-2.0-flash", n_agents=3, temperature=1.0, max_tokens=400
)
graph = create_debate_graph(society, task, rounds=2, summarize=True)

usage = UsageRecorder("runs/quickstart-gemini/usage.json")
results = run_debates(
    graph,
    task.load("test", 5),
    run_id="quickstart-gemini",
    db_path="runs/quickstart-gemini/debates.sqlite",
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
