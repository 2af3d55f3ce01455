"""What a debate remembers.

Everything is a plain dict so that any checkpointer can store it and the fine-tuning module
can rebuild each agent's training conversation from ``Response.messages`` + ``Response.text``
exactly as the model saw it.

How it is stored. A critic's messages are its agent's previous conversation plus one new
prompt, so storing every response whole repeats each conversation once per later round, and a
list channel stored whole in every checkpoint repeats the list once per step: both grow with
the square of the debate. So the nodes write each response as a :class:`ResponseDelta`
(its new turns and which response it continues), and ``responses`` and ``summaries`` are
LangGraph ``DeltaChannel``\\ s: a checkpoint stores none of the list, and the list is rebuilt by
replaying the stored writes through :func:`add_responses`, which expands every delta back into
a whole :class:`Response`. Everything that reads the state (the nodes, ``get_state``, Studio,
a parent graph, :mod:`mafl_graph.traces`) sees whole responses; only the stored writes are
deltas. Lists stored whole (checkpoints of the earlier format, or a snapshot) are read as they are.

The question is a delta channel too (:func:`question_channel`): LangGraph's ``SqliteSaver``
stores every channel's value in every checkpoint, about three per round, so a whole document
as the question would be stored once per step; as a delta channel it is stored with the input
only. (Postgres stores a channel's value once per version either way.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, NotRequired

from langgraph.channels.delta import DeltaChannel

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
    expert: NotRequired[str]
    """The SVF expert that answered (a label, or ``base``), where the agent self-adapts."""


class ResponseDelta(TypedDict):
    """A :class:`Response` as a node writes it: only the turns that its call added.

    Its whole ``messages`` are the conversation of the same agent's response of round
    ``follows`` (that response's messages and its reply), then ``prompt``; without ``follows``,
    ``prompt`` alone.
    """

    agent: int
    role: Role
    round: int
    prompt: list[ChatTurn]
    follows: NotRequired[int]
    text: str
    answer: str | None
    model: str
    tokens: NotRequired[int]
    expert: NotRequired[str]


def add_responses(
    current: list[Response], batches: Sequence[Sequence[Response | ResponseDelta]]
) -> list[Response]:
    """``current`` followed by every response of ``batches``, each delta made whole.

    The reducer of the ``responses`` and ``summaries`` channels. It gives the same list
    whether writes arrive one step at a time or all at once (as when a checkpoint is read
    back), since a delta only refers to a response of an earlier round.
    """
    merged = list(current)
    conversations: dict[int, dict[int, Response]] = {}
    for response in merged:
        conversations.setdefault(response["agent"], {})[response["round"]] = response
    for batch in batches:
        for item in batch:
            whole = _whole(item, conversations)
            merged.append(whole)
            conversations.setdefault(whole["agent"], {})[whole["round"]] = whole
    return merged


def _whole(item: Response | ResponseDelta, earlier: dict[int, dict[int, Response]]) -> Response:
    if "messages" in item:  # written whole (checkpoints of an earlier format)
        return item  # type: ignore[return-value]
    fields: dict[str, Any] = dict(item)
    prompt: list[ChatTurn] = fields.pop("prompt")
    follows: int | None = fields.pop("follows", None)
    history: list[ChatTurn] = []
    if follows is not None:
        before = earlier.get(item["agent"], {}).get(follows)
        if before is None:
            raise ValueError(
                f"The stored response of agent {item['agent']}, round {item['round']} continues "
                f"its round-{follows} response, which the checkpoint does not hold: the "
                "checkpoints are incomplete (were some deleted or pruned?)."
            )
        history = [*before["messages"], ChatTurn(role="assistant", content=before["text"])]
    return Response(messages=history + prompt, **fields)  # type: ignore[typeddict-item]


def responses_channel() -> DeltaChannel[list[Response]]:
    """The channel of ``responses`` and ``summaries`` (see the module docstring).

    No snapshots: a snapshot stores the whole list, every message of every response included,
    and so brings the square back. Rebuilding replays every write of the thread instead, which
    is linear in the debate (LangGraph still snapshots after 5,000 steps, a 1,600-round debate).
    """
    return DeltaChannel(add_responses, list, snapshot_frequency=2**62)


def _last(current: str, writes: Sequence[str]) -> str:
    return writes[-1]


def question_channel() -> DeltaChannel[str]:
    """The channel of ``question``: written once, with the input (see the module docstring).

    Before the input is written it reads as "" (a delta channel is never empty).
    """
    return DeltaChannel(_last, str, snapshot_frequency=2**62)


class DebateInput(TypedDict):
    """What a debate starts from: one problem (``reference``: its answer, if known)."""

    problem_id: str
    question: Annotated[str, question_channel()]
    reference: NotRequired[str | None]


class DebateState(DebateInput, total=False):
    """The graph's state: every reply and summary so far, then the vote's outcome."""

    # Parallel agents append here in the same step, hence the reducers.
    responses: Annotated[list[Response], responses_channel()]
    summaries: Annotated[list[Response], responses_channel()]
    consensus: str | None
    consensus_fraction: float
    correct: bool | None
    """None without a reference, or when grading the consensus ran out of time."""
    undecided: int
    """Grades of the vote (clustering and correctness) that ran out of time."""
    adaptation: dict[str, dict[str, Any]]
    """Per agent (its index as a string), the expert its self-adaptive models chose for this
    problem (:class:`mafl_graph.svf.adapt.Choice` as a dict), written by the ``adapt`` node."""


class DebateRecord(TypedDict):
    """A finished debate as one value: what a graph made with ``output_key`` hands back.

    Under one key of the caller's choosing, so a host graph's own keys (``responses``,
    ``correct``, ``question`` …) are never written by the debate.
    """

    problem_id: str
    consensus: str | None
    consensus_fraction: float
    correct: bool | None
    undecided: int
    responses: list[Response]
    summaries: list[Response]


def output_schema(output_key: str) -> type:
    """The output schema of a debate graph that hands back only ``{output_key: DebateRecord}``."""
    return TypedDict("DebateOutput", {output_key: DebateRecord})  # type: ignore[operator]


class AgentTurn(TypedDict):
    """What one fanned-out node call (a ``Send``) receives: whose turn it is.

    Not the state: a ``Send``'s argument is stored with the checkpoint, so carrying the state
    would store all of it once per agent per step. The node reads the state itself. ``state`` and
    ``summary`` are only found in turns that checkpoints of an earlier format hold.
    """

    agent: int
    round: int
    state: NotRequired[DebateState]
    summary: NotRequired[str | None]


def latest_responses(state: DebateState, round_: int) -> list[Response]:
    """The agents' answers of ``round_``, ordered by agent."""
    return sorted(
        (r for r in state.get("responses", []) if r["round"] == round_), key=lambda r: r["agent"]
    )


def completed_round(state: DebateState) -> int:
    return max((r["round"] for r in state.get("responses", [])), default=0)
