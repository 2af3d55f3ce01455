"""The Task protocol: what the debate graph needs to know about a kind of problem.

Keeping data, prompt and grading behind one small protocol (as Transformer² does) lets the
graph, the datasets and the tuners stay ignorant of arithmetic, GSM8K or MATH.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from mafl_graph.grading import Verdict


@dataclass(frozen=True)
class Problem:
    """One question with its reference answer (None where the task has no ground truth).

    ``metadata`` is what the task knows of the problem that the agents are never shown (a mixed
    corpus's hidden domain, a generator's module); prompts are built from ``question`` alone.
    """

    id: str
    question: str
    answer: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False)


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
        """Whether two extracted answers denote the same value.

        A task whose grading can run out of time also defines ``grade(answer, reference) ->
        Verdict``, which can say UNDECIDED; :func:`grade_answer` uses it where it exists.
        """
        ...


def task_for(task: Task, problem: Problem) -> Task:
    """The task that asks and grades ``problem``.

    A task whose prompt, answer format or equivalence depends on the problem (a mixed corpus
    hands each problem to its source task; code is equivalent when it passes the same tests of
    *its* problem) defines ``for_problem(problem) -> Task``; the debate, the datasets and the
    evaluation ask through this function, with a problem rebuilt from its id, question and
    reference, so ``for_problem`` must work from those three.
    """
    bind = getattr(task, "for_problem", None)
    if callable(bind):
        bound: Task = bind(problem)
        return bound
    return task


def grade_answer(task: Task, answer: str | None, reference: str) -> Verdict:
    """The task's verdict on ``answer`` against ``reference``: what debates and datasets store.

    No answer (None) is DIFFERENT. The task's ``grade`` decides where it has one, so that
    grading that ran out of time comes back UNDECIDED; otherwise ``is_equivalent`` does.
    """
    if answer is None:
        return Verdict.DIFFERENT
    grade = getattr(task, "grade", None)
    if callable(grade):
        verdict = grade(answer, reference)
        if isinstance(verdict, Verdict):
            return verdict
    return Verdict.EQUIVALENT if task.is_equivalent(answer, reference) else Verdict.DIFFERENT
