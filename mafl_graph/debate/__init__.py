"""The debate graph: state, prompts, nodes, graph factory and the durable runner."""

from mafl_graph.debate.graph import create_debate_graph, transient_retry
from mafl_graph.debate.prompts import DebatePrompts
from mafl_graph.debate.run import (
    RUN_KEY,
    CheckpointError,
    DebateResult,
    arun_debates,
    run_debates,
)
from mafl_graph.debate.state import DebateInput, DebateRecord, DebateState, Response

__all__ = [
    "RUN_KEY",
    "CheckpointError",
    "DebateInput",
    "DebatePrompts",
    "DebateRecord",
    "DebateResult",
    "DebateState",
    "Response",
    "arun_debates",
    "create_debate_graph",
    "run_debates",
    "transient_retry",
]
