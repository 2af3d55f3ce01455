"""The debate graph inside another LangGraph app, embedded both ways LangGraph allows.

    python examples/debate_as_subgraph.py "What is 12+7?"

A small "homework helper" app parses a request, has a society of agents debate it and
phrases the verdict. The app keeps its own state under names the debate also uses: its
``responses`` are the replies it gave the user, one per turn, and ``correct`` is its own note.
The debate is built with ``output_key="debate"``, so all it hands back is one record under
``debate`` (consensus, correctness, the transcript): the app's keys are never written by it.

* ``style="subgraph"``: the compiled debate is a node of the app (``add_node``). It reads its
  input (``problem_id``, ``question``, ``reference``) from the app's state under those names.
* ``style="call"``: a node of the app calls the debate with an input it builds, and keeps what
  it wants of the record. Use it when the app's keys for the input have other names.

Either way the debate is compiled without a checkpointer and so uses the app's: a thread of the
app is resumable inside the debate too, each debate is saved under its own checkpoint namespace
of the app's thread, and ``stream(..., subgraphs=True)`` shows each debate step as it lands.
Invoking the app with ``config={"metadata": {"mafl_run_id": "helper"}}`` tags every debate it
runs, so ``read_traces(checkpointer, "helper")`` (or ``read_traces_langsmith`` on its LangSmith
project) reads them all back as training data.
"""

from __future__ import annotations

import hashlib
import operator
import re
import sys
from typing import Annotated, Any, Literal, NotRequired

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from typing_extensions import TypedDict  # pydantic needs it before Python 3.12

from mafl_graph import Arithmetic, DebateRecord, Society, Task, create_debate_graph

RUN_ID = "helper"  # the tag this app's debates carry (config metadata "mafl_run_id")


class HelperState(TypedDict):
    request: str
    problem_id: NotRequired[str]
    question: NotRequired[str]
    reference: NotRequired[str | None]
    debate: NotRequired[DebateRecord]
    """The last debate's record, as the debate hands it back."""
    responses: NotRequired[Annotated[list[str], operator.add]]
    """The app's own replies to the user, one per turn (not the debate's responses)."""
    correct: NotRequired[str]
    """The app's own note (not the debate's correctness)."""


def parse_request(state: HelperState) -> dict[str, Any]:
    """Pull the expression out of a request like "What is 12+7?"."""
    match = re.search(r"[\d(][\d+\-*/ ()]*[\d)]", state["request"])
    if match is None:
        raise ValueError(f"No arithmetic expression in {state['request']!r}.")
    question = match.group(0).replace(" ", "")
    problem_id = hashlib.sha1(question.encode()).hexdigest()[:12]
    return {"problem_id": problem_id, "question": question, "reference": None}


def phrase_reply(state: HelperState) -> dict[str, Any]:
    record = state["debate"]
    answer, share = record["consensus"], record["consensus_fraction"]
    if answer is None:
        return {"responses": [f"The agents could not agree on {state['question']}."]}
    return {"responses": [f"{state['question']} = {answer} ({share:.0%} of the agents agree)."]}


def build_app(
    society: Society,
    task: Task,
    *,
    rounds: int = 2,
    style: Literal["subgraph", "call"] = "subgraph",
    checkpointer: BaseCheckpointSaver | None = None,
) -> CompiledStateGraph:
    """The helper app, with the debate as its ``debate`` node (``style="subgraph"``) or called
    from its ``consult`` node (``style="call"``)."""
    debate = create_debate_graph(society, task, rounds=rounds, output_key="debate").compile(
        name="debate"
    )
    builder = StateGraph(HelperState)
    builder.add_node("parse_request", parse_request)
    builder.add_node("phrase_reply", phrase_reply)
    builder.add_edge(START, "parse_request")
    if style == "subgraph":
        builder.add_node("debate", debate)
        builder.add_edge("parse_request", "debate")
        builder.add_edge("debate", "phrase_reply")
    else:

        def consult(state: HelperState, config: RunnableConfig) -> dict[str, Any]:
            """Ask the debate with an input built here; keep its record."""
            asked = {"problem_id": state["problem_id"], "question": state["question"]}
            return {"debate": debate.invoke(asked, config)["debate"]}

        builder.add_node("consult", consult)
        builder.add_edge("parse_request", "consult")
        builder.add_edge("consult", "phrase_reply")
    builder.add_edge("phrase_reply", END)
    return builder.compile(checkpointer=checkpointer or InMemorySaver())


if __name__ == "__main__":
    request = sys.argv[1] if len(sys.argv) > 1 else "What is 12+7?"
    society = Society.from_model("local:smollm2", n_agents=3, max_tokens=96)
    app = build_app(society, Arithmetic())
    config: RunnableConfig = {
        "configurable": {"thread_id": "helper-1"},
        "metadata": {"mafl_run_id": RUN_ID},
    }
    for namespace, update in app.stream(
        {"request": request}, config, stream_mode="updates", subgraphs=True
    ):
        where = "/".join(n.split(":")[0] for n in namespace) or "app"
        print(f"[{where}] {', '.join(update)}")
    print(app.get_state(config).values["responses"][-1])
