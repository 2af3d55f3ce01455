"""mafl_graph: multiagent fine-tuning (Subramaniam, Du et al., ICLR 2025) on LangGraph."""

from mafl_graph.debate import (
    DebateInput,
    DebatePrompts,
    DebateResult,
    DebateState,
    Response,
    arun_debates,
    create_debate_graph,
    run_debates,
)
from mafl_graph.evaluate import Accuracy, DebateSummary, accuracy, summarize_debates
from mafl_graph.grading import (
    Vote,
    extract_boxed,
    extract_number,
    is_equivalent,
    last_number,
    majority_vote,
)
from mafl_graph.models import resolve_model
from mafl_graph.society import Agent, Society
from mafl_graph.tasks import GSM8K, MATH, Arithmetic, Problem, Task, get_task

__all__ = [
    "GSM8K",
    "MATH",
    "Accuracy",
    "Agent",
    "Arithmetic",
    "DebateInput",
    "DebatePrompts",
    "DebateResult",
    "DebateState",
    "DebateSummary",
    "Problem",
    "Response",
    "Society",
    "Task",
    "Vote",
    "accuracy",
    "arun_debates",
    "create_debate_graph",
    "extract_boxed",
    "extract_number",
    "get_task",
    "is_equivalent",
    "last_number",
    "majority_vote",
    "resolve_model",
    "run_debates",
    "summarize_debates",
]
