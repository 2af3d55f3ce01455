"""The debate graph: state, prompts, nodes, graph factory and the durable runner."""

from mafl_graph.debate.graph import create_debate_graph
from mafl_graph.debate.prompts import DebatePrompts
from mafl_graph.debate.run import DebateResult, arun_debates, run_debates
from mafl_graph.debate.state import DebateInput, DebateState, Response

__all__ = [
    "DebateInput",
    "DebatePrompts",
    "DebateResult",
    "DebateState",
    "Response",
    "arun_debates",
    "create_debate_graph",
    "run_debates",
]
