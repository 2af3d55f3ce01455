"""The Task protocol: what the debate graph needs to know about a kind of problem.

Keeping data, prompt and grading behind one small protocol (as Transformer² does) lets the
graph, the datasets and the tuners stay ignorant of arithmetic, GSM8K or MATH.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Problem:
    """One question with its reference answer (None where the task has no ground truth)."""

    id: str
    question: str
    answer: str | None = None


@runtime_checkable
class Task(Protocol):
    """A family of problems: how to load them, ask them and grade the answers."""

    @property
    def name(self) -> str:
        """A short identifier ("arithmetic", "gsm8k", …) for manifests and problem ids."""
        ...

    def load(self, split: str, n: int | None = None) -> list[Problem]:
        """The first ``n`` problems of ``split`` ("train" or "test"), always in the same order."""
        ...

    def question_prompt(self, problem: Problem) -> str:
        """The round-1 user message for ``problem`` (the paper's wording)."""
        ...

    def extract_answer(self, text: str) -> str | None:
        """The final answer stated in a model's reply, or None if it states none."""
        ...

    def is_equivalent(self, answer: str, reference: str) -> bool:
        """Whether two extracted answers denote the same value."""
        ...
