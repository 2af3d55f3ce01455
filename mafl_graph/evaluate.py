"""Accuracy with standard errors, and what a set of debates says about the society."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from mafl_graph.debate.run import DebateResult
from mafl_graph.tasks.base import Task


@dataclass(frozen=True)
class Accuracy:
    """A proportion over problems with its standard error sqrt(p(1-p)/n)."""

    correct: int
    n: int

    @property
    def mean(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def stderr(self) -> float:
        return math.sqrt(self.mean * (1 - self.mean) / self.n) if self.n else 0.0

    def __str__(self) -> str:
        return f"{100 * self.mean:.1f} ± {100 * self.stderr:.1f}% ({self.correct}/{self.n})"


@dataclass(frozen=True)
class DebateSummary:
    """Consensus accuracy plus how the agents did in each round.

    ``accuracy`` counts every problem, failed debates and unparseable answers as wrong.
    ``round_accuracy[r]`` is the accuracy of single agents' answers in round r+1, so the
    effect of debating is visible next to the voted result.
    """

    accuracy: Accuracy
    round_accuracy: list[Accuracy]
    consensus: float
    failed: int


def accuracy(flags: Sequence[bool | None]) -> Accuracy:
    return Accuracy(correct=sum(1 for f in flags if f), n=len(flags))


def summarize_debates(results: Sequence[DebateResult], task: Task) -> DebateSummary:
    rounds = max((r["round"] for res in results for r in res.responses), default=0)
    round_accuracy = []
    for round_ in range(1, rounds + 1):
        flags = [
            r["answer"] is not None
            and res.reference is not None
            and task.is_equivalent(r["answer"], res.reference)
            for res in results
            for r in res.responses
            if r["round"] == round_
        ]
        round_accuracy.append(accuracy(flags))
    ok = [res for res in results if res.ok]
    return DebateSummary(
        accuracy=accuracy([res.correct for res in results]),
        round_accuracy=round_accuracy,
        consensus=sum(res.consensus_fraction for res in ok) / len(ok) if ok else 0.0,
        failed=len(results) - len(ok),
    )
