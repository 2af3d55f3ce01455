"""The debate graph for LangGraph Studio (`langgraph dev`, see langgraph.json).

Studio calls ``make_graph`` with the run's configuration, so the model, the number of agents
and rounds are chosen per run in Studio's "configurable" panel. The graph is compiled without
a checkpointer: the dev server brings its own and refuses graphs that do.
"""

from __future__ import annotations

from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph

from mafl_graph import Society, create_debate_graph, get_task


def make_graph(config: RunnableConfig) -> CompiledStateGraph:
    settings = config.get("configurable", {})
    society = Society.from_model(
        settings.get("model", "local:smollm2"), n_agents=int(settings.get("agents", 3))
    )
    task = get_task(settings.get("task", "arithmetic"))
    return create_debate_graph(
        society,
        task,
        rounds=int(settings.get("rounds", 2)),
        summarize=bool(settings.get("summarize", True)),
    ).compile(name="debate")
