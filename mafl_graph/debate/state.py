"""What a debate remembers.

Everything is a plain dict so that any checkpointer can store it and the fine-tuning module
can rebuild each agent's training conversation from ``Response.messages`` + ``Response.text``
exactly as the model saw it.
"""

from __future__ import annotations

import operator
from typing import Annotated, Literal, NotRequired

# typing_extensions' TypedDict: pydantic (and so LangGraph Studio's input/output schemas) refuses
# typing.TypedDict before Python 3.12.
from typing_extensions import TypedDict

Role = Literal["generator", "critic", "summarizer"]


class ChatTurn(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


class Response(TypedDict):
    """One model call of a debate."""

    agent: int
    role: Role
    round: int
    messages: list[ChatTurn]
    """Exactly what the model was sent, in order."""
    text: str
    answer: str | None
    """The task's parse of ``text``; None when it states no answer (counted wrong)."""
    model: str
    tokens: NotRequired[int]
    """Prompt plus reply tokens, where the model reports usage: what the call cost."""


class DebateInput(TypedDict):
    problem_id: str
    question: str
    reference: NotRequired[str | None]


class DebateState(DebateInput, total=False):
    # Parallel agents append here in the same step, hence the reducers.
    responses: Annotated[list[Response], operator.add]
    summaries: Annotated[list[Response], operator.add]
    consensus: str | None
    consensus_fraction: float
    correct: bool | None
    """None without a reference, or when grading the consensus ran out of time."""
    undecided: int
    """Grades of the vote (clustering and correctness) that ran out of time."""


class AgentTurn(TypedDict):
    """What one fanned-out node call (a ``Send``) receives: the state plus whose turn it is."""

    state: DebateState
    agent: int
    round: int
    summary: NotRequired[str | None]


def latest_responses(state: DebateState, round_: int) -> list[Response]:
    """The agents' answers of ``round_``, ordered by agent."""
    return sorted(
        (r for r in state.get("responses", []) if r["round"] == round_), key=lambda r: r["agent"]
    )


def completed_round(state: DebateState) -> int:
    return max((r["round"] for r in state.get("responses", [])), default=0)
