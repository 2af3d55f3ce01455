"""The debate graph inside another LangGraph app, as one node of it.

    python examples/debate_as_subgraph.py "What is 12+7?"

A small "homework helper" app parses a request, lets a society of agents debate it (the
debate is a compiled subgraph added with ``add_node``), and phrases the verdict. The parent
and the subgraph share the keys they have in common (``problem_id``, ``question``,
``consensus``, ``responses`` …), so no glue code passes state between them. The subgraph is
compiled without a checkpointer and so uses the parent's: a thread of the app is resumable
inside the debate too, and ``stream(..., subgraphs=True)`` shows each debate step as it lands.
"""

from __future__ import annotations

import hashlib
import operator
import re
import sys
from typing import Annotated, Any, NotRequired

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from typing_extensions import TypedDict  # pydantic needs it before Python 3.12

from mafl_graph import Arithmetic, Response, Society, Task, create_debate_graph


class HelperState(TypedDict):
    request: str
    problem_id: NotRequired[str]
    question: NotRequired[str]
    reference: NotRequired[str | None]
    # Filled by the debate subgraph (same names as in DebateState; the transcript appends).
    responses: NotRequired[Annotated[list[Response], operator.add]]
    consensus: NotRequired[str | None]
    consensus_fraction: NotRequired[float]
    reply: NotRequired[str]


def parse_request(state: HelperState) -> dict[str, Any]:
    """Pull the expression out of a request like "What is 12+7?"."""
    match = re.search(r"[\d(][\d+\-*/ ()]*[\d)]", state["request"])
    if match is None:
        raise ValueError(f"No arithmetic expression in {state['request']!r}.")
    question = match.group(0).replace(" ", "")
    problem_id = hashlib.sha1(question.encode()).hexdigest()[:12]
    return {"problem_id": problem_id, "question": question, "reference": None}


def phrase_reply(state: HelperState) -> dict[str, Any]:
    answer, share = state.get("consensus"), state.get("consensus_fraction", 0.0)
    if answer is None:
        return {"reply": f"The agents could not agree on {state['question']}."}
    return {"reply": f"{state['question']} = {answer} ({share:.0%} of the agents agree)."}


def build_app(society: Society, task: Task, *, rounds: int = 2) -> CompiledStateGraph:
    """The helper app, with the debate as its ``debate`` node."""
    debate = create_debate_graph(society, task, rounds=rounds).compile(name="debate")
    builder = StateGraph(HelperState)
    builder.add_node("parse_request", parse_request)
    builder.add_node("debate", debate)
    builder.add_node("phrase_reply", phrase_reply)
    builder.add_edge(START, "parse_request")
    builder.add_edge("parse_request", "debate")
    builder.add_edge("debate", "phrase_reply")
    builder.add_edge("phrase_reply", END)
    return builder.compile(checkpointer=InMemorySaver())


if __name__ == "__main__":
    request = sys.argv[1] if len(sys.argv) > 1 else "What is 12+7?"
    society = Society.from_model("local:smollm2", n_agents=3, max_tokens=96)
    app = build_app(society, Arithmetic())
    config = {"configurable": {"thread_id": "helper-1"}}
    for namespace, update in app.stream(
        {"request": request}, config, stream_mode="updates", subgraphs=True
    ):
        where = "/".join(n.split(":")[0] for n in namespace) or "app"
        print(f"[{where}] {', '.join(update)}")
    print(app.get_state(config).values["reply"])
