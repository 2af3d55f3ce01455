"""Debate traces -> each agent's fine-tuning data, by the paper's definitions.

- Generator agent n (D_G): its own round-1 conversations (the question and its answer) whose
  answer is equivalent to the debate's consensus (or, with ``target="reference"``, to the
  ground truth).
- Critic agent n: its own final-round conversations whose answer is equivalent to the target,
  split by its round-1 answer: D_C⁻ (first answer wrong, final right) and D_C⁺ (right both
  times). The training set is ``w·D_C⁻ + (1−w)·D_C⁺``: the largest subsample without repeats
  whose share of D_C⁻ is ``w``, so a small side shrinks the set instead of crashing (the
  reference code indexes D_C⁺ once per D_C⁻ example and fails when D_C⁺ is smaller; its
  commented-out coin flip keeps about one D_C⁺ per two D_C⁻, i.e. w ≈ 0.67).
- A critic example is the whole conversation the critic saw plus its final reply; only that
  reply carries weight 1. Earlier assistant turns (its first answer, possibly wrong) carry
  weight 0, so no one learns to repeat a wrong first answer (the reference code trains on it).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NotRequired, TypedDict

from mafl_graph.debate.state import Response
from mafl_graph.grading import Verdict
from mafl_graph.tasks.base import Problem, Task, grade_answer, task_for
from mafl_graph.traces import DebateTrace

TrainedRole = Literal["generator", "critic"]
Target = Literal["consensus", "reference"]
Subset = Literal["D_G", "D_C-", "D_C+"]
TARGETS: tuple[str, ...] = ("consensus", "reference")
DEFAULT_W = 0.67


class TrainingMessage(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str
    weight: NotRequired[int]
    """Assistant turns only: 1 = learn this reply, 0 = context the model said earlier."""


class Example(TypedDict):
    """One training conversation, with where it came from."""

    messages: list[TrainingMessage]
    problem_id: str
    agent: int
    role: TrainedRole
    subset: Subset


@dataclass(frozen=True)
class DatasetStats:
    """Sizes and (estimated) lengths of one agent's dataset; token counts are estimates."""

    agent: int
    role: TrainedRole
    examples: int
    """Size of the training set."""
    candidates: int
    """This agent's responses in debates that have a target (the most it could be)."""
    no_target: int
    """Debates skipped because they have no target (no consensus, or no reference)."""
    wrong_first: int = 0
    """|D_C⁻|: available critic examples whose first answer was wrong."""
    right_first: int = 0
    """|D_C⁺|: available critic examples whose first answer was right."""
    used_wrong_first: int = 0
    used_right_first: int = 0
    mean_tokens: float = 0.0
    mean_trained_tokens: float = 0.0
    """Mean tokens of the weight-1 turns: what the loss sees."""
    undecided: int = 0
    """Candidates left out because grading an answer against the target ran out of time: not
    known to be right, and (for a critic's first answer) not known to be wrong either."""

    def why_empty(self, target: str, w: float) -> str:
        """Why a set came out with no example, in the words of the paper's subsets."""
        if not self.candidates:
            return f"none of its debates had a {target} ({self.no_target} without)"
        if self.role == "critic" and (self.wrong_first or self.right_first):
            return (
                f"D_C- (first answers wrong, revised to the {target}) has "
                f"{self.wrong_first} and D_C+ {self.right_first}; w = {w:g} asks for "
                f"{w:.0%} of D_C-"
            )
        undecided = f", {self.undecided} undecided" if self.undecided else ""
        return f"none of its {self.candidates} answers agreed with the {target}{undecided}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AgentDataset:
    """The training set of one agent in one role, in training order."""

    agent: int
    role: TrainedRole
    examples: list[Example]
    stats: DatasetStats
    pools: dict[str, list[Example]] = field(default_factory=dict)
    """Critics: all of D_C⁻ and D_C⁺ before mixing, keyed "D_C-" and "D_C+"."""

    @property
    def name(self) -> str:
        """``agent0-generator``: the stem of the exported files."""
        return f"agent{self.agent}-{self.role}"


def build_datasets(
    traces: Iterable[DebateTrace],
    task: Task,
    *,
    w: float = DEFAULT_W,
    target: Target = "consensus",
    seed: int = 0,
    n_agents: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> dict[tuple[int, TrainedRole], AgentDataset]:
    """Every agent's generator dataset, and critic dataset where the debates had critics.

    ``traces``: finished debates (``read_traces(...)``, sorted by thread id for determinism).
    ``task``: its grade (:func:`~mafl_graph.tasks.base.grade_answer`) decides which answers
    agree with the target; an answer the task could not parse (None) is always wrong, and one
    whose grading ran out of time is left out and counted in ``DatasetStats.undecided``.
    ``w``: the share of D_C⁻ in each critic's set. ``target``: "consensus" (the paper) or
    "reference" (the ground truth, where the task has one). ``seed``: fixes the mixing and the
    order. ``n_agents``: make (empty) datasets for agents that never produced an example, too.
    ``count_tokens``: a real tokenizer's count for the statistics; by default
    :func:`estimate_tokens`.
    """
    w = check_w(w)
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}; got {target!r}.")
    traces = list(traces)
    if target == "reference" and traces and all(t.reference is None for t in traces):
        raise ValueError(
            f"target='reference' but none of the {len(traces)} debates has a reference answer; "
            "use target='consensus' for tasks without ground truth."
        )
    count = count_tokens or estimate_tokens
    agents = _agents(traces, n_agents)
    has_critics = any(r["role"] == "critic" for t in traces for r in t.responses)
    datasets: dict[tuple[int, TrainedRole], AgentDataset] = {}
    for agent in agents:
        datasets[(agent, "generator")] = _generator(traces, task, agent, target, seed, count)
        if has_critics:
            datasets[(agent, "critic")] = _critic(traces, task, agent, target, w, seed, count)
    return datasets


def check_w(w: float) -> float:
    """``w`` as a float in [0, 1], or a clear error naming the value."""
    try:
        value = float(w)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ValueError(
            f"w is the share of D_C⁻ (first answer wrong) in each critic's training set and "
            f"must lie in [0, 1]; got w={w!r}."
        )
    return value


def mix_counts(n_wrong: int, n_right: int, w: float) -> tuple[int, int]:
    """How many of D_C⁻ and D_C⁺ to keep: the largest mix, without repeats, with share ``w``.

    The side that runs out first is used whole and the other is cut to match, so an empty side
    with 0 < w < 1 yields an empty set rather than a mix with the wrong proportion.
    """
    w = check_w(w)
    if w == 1.0:
        return n_wrong, 0
    if w == 0.0:
        return 0, n_right
    wanted_right = n_wrong * (1 - w) / w
    if wanted_right <= n_right:
        return n_wrong, round(wanted_right)
    return min(n_wrong, round(n_right * w / (1 - w))), n_right


def estimate_tokens(text: str) -> int:
    """About 4 characters per token (OpenAI's rule of thumb for English).

    An estimate, so that statistics and limit checks need no tokenizer download; digits and
    LaTeX run denser than that, so treat limits checked with it as approximate and pass a real
    tokenizer's count where it matters.
    """
    return math.ceil(len(text) / 4)


def example_tokens(
    messages: Sequence[TrainingMessage], count: Callable[[str], int] = estimate_tokens
) -> tuple[int, int]:
    """(all tokens, tokens of the weight-1 turns) of one conversation."""
    total = trained = 0
    for m in messages:
        n = count(m["content"])
        total += n
        if m["role"] == "assistant" and m.get("weight", 1) == 1:
            trained += n
    return total, trained


# The two roles -------------------------------------------------------------------------


def _generator(
    traces: list[DebateTrace],
    task: Task,
    agent: int,
    target: Target,
    seed: int,
    count: Callable[[str], int],
) -> AgentDataset:
    examples: list[Example] = []
    candidates = no_target = undecided = 0
    for trace in traces:
        goal = _target(trace, target)
        if goal is None:
            no_target += 1
            continue
        first = _response(trace, agent, 1)
        if first is None:
            continue
        candidates += 1
        verdict = grade_answer(_bound(task, trace), first["answer"], goal)
        undecided += verdict is Verdict.UNDECIDED
        if verdict is Verdict.EQUIVALENT:
            examples.append(_example(first, trace, "generator", "D_G"))
    random.Random(f"{seed}/{agent}/generator").shuffle(examples)
    stats = DatasetStats(
        agent, "generator", len(examples), candidates, no_target, undecided=undecided
    )
    return AgentDataset(agent, "generator", examples, _with_lengths(stats, examples, count))


def _critic(
    traces: list[DebateTrace],
    task: Task,
    agent: int,
    target: Target,
    w: float,
    seed: int,
    count: Callable[[str], int],
) -> AgentDataset:
    wrong: list[Example] = []
    right: list[Example] = []
    candidates = no_target = undecided = 0
    for trace in traces:
        goal = _target(trace, target)
        if goal is None:
            no_target += 1
            continue
        last_round = max((r["round"] for r in trace.responses), default=0)
        final = _response(trace, agent, last_round) if last_round > 1 else None
        first = _response(trace, agent, 1)
        if final is None or first is None or final["role"] != "critic":
            continue
        candidates += 1
        bound = _bound(task, trace)
        verdict = grade_answer(bound, final["answer"], goal)
        if verdict is Verdict.EQUIVALENT:
            # Whether the first answer was right decides D_C+ or D_C-; undecided is neither.
            verdict = grade_answer(bound, first["answer"], goal)
            if verdict is Verdict.EQUIVALENT:
                right.append(_example(final, trace, "critic", "D_C+"))
            elif verdict is Verdict.DIFFERENT:
                wrong.append(_example(final, trace, "critic", "D_C-"))
        undecided += verdict is Verdict.UNDECIDED
    n_wrong, n_right = mix_counts(len(wrong), len(right), w)
    rng = random.Random(f"{seed}/{agent}/critic")
    examples = rng.sample(wrong, n_wrong) + rng.sample(right, n_right)
    rng.shuffle(examples)
    stats = DatasetStats(
        agent,
        "critic",
        len(examples),
        candidates,
        no_target,
        wrong_first=len(wrong),
        right_first=len(right),
        used_wrong_first=n_wrong,
        used_right_first=n_right,
        undecided=undecided,
    )
    return AgentDataset(
        agent,
        "critic",
        examples,
        _with_lengths(stats, examples, count),
        pools={"D_C-": wrong, "D_C+": right},
    )


# Helpers -----------------------------------------------------------------------------------


def _example(response: Response, trace: DebateTrace, role: TrainedRole, subset: Subset) -> Example:
    """What the model was sent, then its reply; only the reply is learned."""
    messages: list[TrainingMessage] = []
    for turn in response["messages"]:
        message = TrainingMessage(role=turn["role"], content=turn["content"])
        if turn["role"] == "assistant":
            message["weight"] = 0
        messages.append(message)
    messages.append(TrainingMessage(role="assistant", content=response["text"], weight=1))
    return Example(
        messages=messages,
        problem_id=trace.problem_id,
        agent=response["agent"],
        role=role,
        subset=subset,
    )


def _bound(task: Task, trace: DebateTrace) -> Task:
    return task_for(task, Problem(trace.problem_id, trace.question, trace.reference))


def _target(trace: DebateTrace, target: Target) -> str | None:
    return trace.consensus if target == "consensus" else trace.reference


def _response(trace: DebateTrace, agent: int, round_: int) -> Response | None:
    return next((r for r in trace.responses if r["agent"] == agent and r["round"] == round_), None)


def _agents(traces: list[DebateTrace], n_agents: int | None) -> list[int]:
    seen = {r["agent"] for t in traces for r in t.responses if r["role"] != "summarizer"}
    if n_agents is None:
        return sorted(seen)
    if n_agents < 1:
        raise ValueError(f"n_agents must be at least 1; got {n_agents}.")
    if seen and max(seen) >= n_agents:
        raise ValueError(
            f"the debates have agents up to {max(seen)}, more than n_agents={n_agents} allows."
        )
    return list(range(n_agents))


def _with_lengths(
    stats: DatasetStats, examples: list[Example], count: Callable[[str], int]
) -> DatasetStats:
    if not examples:
        return stats
    lengths = [example_tokens(e["messages"], count) for e in examples]
    return DatasetStats(
        **{
            **stats.as_dict(),
            "mean_tokens": sum(t for t, _ in lengths) / len(lengths),
            "mean_trained_tokens": sum(t for _, t in lengths) / len(lengths),
        }
    )
