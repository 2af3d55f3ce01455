"""How many bytes a debate's checkpoints will take, estimated before it runs.

What a debate stores is linear in what is said in it (see :mod:`mafl_graph.debate.state`), but
what is said can still be large: every agent is shown the other agents' answers each round
(so that text grows with the square of ``agents``), each round adds a round's worth, and the
question goes into every agent's first prompt and, in SQLite, into every checkpoint (LangGraph's
``SqliteSaver`` stores each channel's value in each checkpoint; Postgres stores it once).
:func:`check_size` warns before a run whose largest debate is estimated above a limit
(``$MAFL_CHECKPOINT_WARN_MB``, default 100 MB), naming which of those drives it.

The estimate assumes replies and summaries of :data:`ASSUMED_REPLY_CHARS` characters; the
per-call and per-checkpoint overheads are fitted to ``benchmarks/checkpoint_size.py`` (SQLite).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from mafl_graph.tasks.base import Problem, Task, task_for

WARN_ENV = "MAFL_CHECKPOINT_WARN_MB"
DEFAULT_WARN_MB = 100.0
ASSUMED_REPLY_CHARS = 2000
"""About 500 tokens: a worked answer with its reasoning."""
_TEMPLATE_CHARS = 300  # a debate or summary prompt's own words
_CALL_BYTES = 600  # keys, fields and the task's send, per model call
_CHECKPOINT_BYTES = 800  # one checkpoint row with its channel versions


class CheckpointSizeWarning(UserWarning):
    """A debate is estimated to store more checkpoint bytes than the configured limit."""


@dataclass(frozen=True)
class DebateShape:
    """What a debate graph was built with; :func:`create_debate_graph` attaches it as
    ``graph.debate_shape`` so that :func:`run_debates` can estimate a run before it starts."""

    agents: int
    rounds: int
    summarize: bool
    task: Task


@dataclass(frozen=True)
class SizeEstimate:
    """Estimated bytes of one debate, split by what drives each part."""

    question: int
    """The question: in each agent's first prompt and in every checkpoint."""
    agents: int
    """The other agents' answers shown to each agent (or summarizer) every round."""
    rounds: int
    """Everything else: replies, summaries, prompts' own words, per-call overhead."""

    @property
    def total(self) -> int:
        return self.question + self.agents + self.rounds

    @property
    def driver(self) -> str:
        """The part that weighs most: "question", "agents" or "rounds"."""
        parts = {"question": self.question, "agents": self.agents, "rounds": self.rounds}
        return max(parts, key=lambda k: parts[k])


def estimate_debate_bytes(
    shape: DebateShape, prompt_chars: int, *, reply_chars: int = ASSUMED_REPLY_CHARS
) -> SizeEstimate:
    """The estimated checkpoint bytes of one debate whose question prompt has ``prompt_chars``."""
    n, later = shape.agents, shape.rounds - 1
    checkpoints = (3 if shape.summarize else 2) * shape.rounds + 2
    calls = n * shape.rounds + (n * later if shape.summarize else 0)
    advice = later * n * (n - 1) * reply_chars  # answers shown to others (or the summarizer)
    per_round = n * (reply_chars + _TEMPLATE_CHARS)  # replies, and the prompts' own words
    if shape.summarize:  # each summary is written, then shown to its critic
        per_round += n * (2 * reply_chars + _TEMPLATE_CHARS)
    rest = n * reply_chars + later * per_round
    rest += calls * _CALL_BYTES + checkpoints * _CHECKPOINT_BYTES
    return SizeEstimate(question=prompt_chars * (n + checkpoints), agents=advice, rounds=rest)


def warn_limit_bytes() -> float:
    """The limit from ``$MAFL_CHECKPOINT_WARN_MB`` (0 or less turns the warning off)."""
    raw = os.environ.get(WARN_ENV, "").strip()
    if not raw:
        return DEFAULT_WARN_MB * 1e6
    try:
        megabytes = float(raw)
    except ValueError:
        raise ValueError(
            f"${WARN_ENV} must be a number of megabytes (0 turns the warning off); got {raw!r}."
        ) from None
    return megabytes * 1e6 if megabytes > 0 and math.isfinite(megabytes) else math.inf


def check_size(shape: DebateShape, problems: Sequence[Problem]) -> SizeEstimate | None:
    """Warn (:class:`CheckpointSizeWarning`) when the largest debate of ``problems`` is
    estimated above the limit; return that estimate, or None when none is above it."""
    limit = warn_limit_bytes()
    if not problems or math.isinf(limit):
        return None
    longest = max(problems, key=lambda p: len(p.question))
    prompt = task_for(shape.task, longest).question_prompt(longest)
    estimate = estimate_debate_bytes(shape, len(prompt))
    if estimate.total <= limit:
        return None
    why = {
        "question": f"the question of problem {longest.id!r} ({len(longest.question):,} "
        f"characters) is stored in each agent's first prompt and in each checkpoint: a "
        "shorter question (or fewer rounds and agents) stores less",
        "agents": f"each of the {shape.agents} agents is shown the other agents' answers every "
        "round: the text grows with the square of the number of agents (agents, --agents)",
        "rounds": f"each of the {shape.rounds} rounds adds every agent's reply and prompt "
        "(rounds, --rounds)",
    }[estimate.driver]
    warnings.warn(
        CheckpointSizeWarning(
            f"One debate is estimated to store about {_mb(estimate.total)} MB of checkpoints "
            f"(at {ASSUMED_REPLY_CHARS:,}-character replies), above the {_mb(limit)} MB limit "
            f"set by ${WARN_ENV}: {why}."
        ),
        stacklevel=2,
    )
    return estimate


def _mb(size: float) -> str:
    megabytes = size / 1e6
    return f"{megabytes:,.0f}" if megabytes >= 10 else f"{megabytes:.2g}"
