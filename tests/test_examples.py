"""examples/debate_as_subgraph.py: the debate graph as one node of another LangGraph app.

Scripted models (this checks the wiring between the apps, not a model): the parent's state
flows into the debate and its verdict and transcript flow back, the subgraph uses the
parent's checkpointer, and streaming with ``subgraphs=True`` shows the debate's own steps.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from fakes import ScriptedModel

from mafl_graph import Arithmetic, Society

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "debate_as_subgraph.py"


def _answer(messages) -> str:
    first = messages[0].text
    if "What is the result of " not in first:  # the summarizer's prompt
        return "The others say the same."
    expression = first.split("What is the result of ", 1)[1].split("?", 1)[0]
    return f"\\boxed{{{eval(expression, {'__builtins__': {}})}}}"  # digits and + - * only


def test_the_debate_runs_as_a_node_of_another_app_and_hands_back_its_verdict():
    # Imported as a module (not run as __main__): its definitions, with resolvable type hints.
    spec = importlib.util.spec_from_file_location("debate_as_subgraph", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example
    spec.loader.exec_module(example)
    society = Society.from_model(ScriptedModel(reply=_answer), n_agents=3)
    app = example.build_app(society, Arithmetic())
    config = {"configurable": {"thread_id": "t1"}}
    namespaces = set()
    for namespace, _update in app.stream(
        {"request": "Hi! What is 12 + 7*2?"}, config, stream_mode="updates", subgraphs=True
    ):
        namespaces.add(namespace[0].split(":")[0] if namespace else "app")
    state = app.get_state(config).values
    assert state["question"] == "12+7*2"
    assert state["consensus"] == "26" and state["consensus_fraction"] == 1.0
    assert state["reply"] == "12+7*2 = 26 (100% of the agents agree)."
    assert len(state["responses"]) == 6  # 3 agents × 2 rounds, the transcript in the parent
    assert namespaces == {"app", "debate"}  # the debate's own steps streamed from inside it
    # The subgraph saved its steps in the parent's checkpointer, under its own namespace.
    history = list(app.get_state_history(config))
    assert len(history) > 3
    inner = app.get_state(config, subgraphs=True)
    assert inner.values["reply"]
