"""examples/debate_as_subgraph.py: the debate graph as one node of another LangGraph app.

Scripted models (this checks the wiring between the apps, not a model), both ways of embedding:
the app's state flows into the debate and only its record flows back (the app's own keys of the
same names as the debate's are left alone), the debate uses the app's checkpointer, streaming with
``subgraphs=True`` shows its own steps, and two debates of one thread are both read back.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from fakes import ScriptedModel

from mafl_graph import Arithmetic, Society, read_traces

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "debate_as_subgraph.py"


def _answer(messages) -> str:
    first = messages[0].text
    if "What is the result of " not in first:  # the summarizer's prompt
        return "The others say the same."
    expression = first.split("What is the result of ", 1)[1].split("?", 1)[0]
    return f"\\boxed{{{eval(expression, {'__builtins__': {}})}}}"  # digits and + - * only


def _example():
    # Imported as a module (not run as __main__): its definitions, with resolvable type hints.
    spec = importlib.util.spec_from_file_location("debate_as_subgraph", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example
    spec.loader.exec_module(example)
    return example


@pytest.mark.parametrize("style", ["subgraph", "call"])
def test_the_debate_runs_inside_another_app_and_hands_back_only_its_record(style: str):
    example = _example()
    society = Society.from_model(ScriptedModel(reply=_answer), n_agents=3)
    app = example.build_app(society, Arithmetic(), style=style)
    config = {"configurable": {"thread_id": "t1"}, "metadata": {"mafl_run_id": "helper"}}
    namespaces = set()
    # The app's own keys carry the debate's names: the debate must leave them alone.
    start = {"request": "Hi! What is 12 + 7*2?", "responses": ["Hello!"], "correct": "app-value"}
    for namespace, _update in app.stream(start, config, stream_mode="updates", subgraphs=True):
        namespaces.add(namespace[0].split(":")[0] if namespace else "app")
    state = app.get_state(config).values
    assert state["question"] == "12+7*2"
    assert state["responses"] == ["Hello!", "12+7*2 = 26 (100% of the agents agree)."]
    assert state["correct"] == "app-value"
    record = state["debate"]
    assert record["consensus"] == "26" and record["consensus_fraction"] == 1.0
    assert record["correct"] is None  # no reference given
    assert len(record["responses"]) == 6  # 3 agents × 2 rounds: the transcript, in the record
    assert len(record["summaries"]) == 3
    assert {"consensus", "summaries", "undecided", "consensus_fraction"}.isdisjoint(state)
    # The debate's own steps streamed from inside it, under the node that holds it.
    assert namespaces == {"app", "debate" if style == "subgraph" else "consult"}
    history = list(app.get_state_history(config))
    assert len(history) > 3

    # A second turn in the same thread: a second debate, each read back from the app's
    # checkpointer under its own namespace of the thread.
    app.invoke({"request": "And 3*3?"}, config)
    state = app.get_state(config).values
    assert state["debate"]["consensus"] == "9" and state["correct"] == "app-value"
    assert state["responses"][-1] == "3*3 = 9 (100% of the agents agree)."
    traces = read_traces(app.checkpointer, "helper")
    assert sorted(t.consensus for t in traces) == ["26", "9"]
    assert {t.thread_id for t in traces} == {"t1"} and traces.unfinished == []
    assert len({t.checkpoint_ns for t in traces}) == 2
    assert all(len(t.responses) == 6 and t.metadata["mafl_run_id"] == "helper" for t in traces)
