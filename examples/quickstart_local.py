"""Debate four arithmetic problems with three copies of the embedded SmolLM2-135M, offline.

    python examples/quickstart_local.py

Run it twice: the second run reads every finished debate back from the SQLite checkpoints
and makes no model call.
"""

from mafl_graph import Arithmetic, Society, create_debate_graph, run_debates, summarize_debates

task = Arithmetic(terms=2, low=0, high=20, operators="+")
society = Society.from_model("local:smollm2", n_agents=3, max_tokens=96)
graph = create_debate_graph(society, task, rounds=2, summarize=True)

results = run_debates(
    graph, task.load("test", 4), run_id="quickstart", db_path="runs/quickstart.sqlite"
)
for result in results:
    answers = [r["answer"] for r in result.responses if r["round"] == 2]
    print(
        f"{result.question} = {result.reference}: agents said {answers}, "
        f"consensus {result.consensus} ({'right' if result.correct else 'wrong'})"
    )
print("accuracy", summarize_debates(results, task).accuracy)
