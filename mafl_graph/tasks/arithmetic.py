"""Generated arithmetic problems: the paper's ``a+b*c+d-e*f`` with values 0-29, and knobs.

Problems are drawn from a seeded generator, so there is nothing to download; a hash of each
expression decides its split, so train and test never share a problem, whatever the seed.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import ClassVar

from mafl_graph.grading import extract_number, to_number
from mafl_graph.tasks.base import Problem

SPLITS = ("train", "test")
DEFAULT_N = 1000
_TEST_BUCKETS = 1  # of 5: a fifth of all expressions belong to the test split
_MAX_MISSES = 10_000  # draws in a row without a new problem before giving up


@dataclass(frozen=True)
class Arithmetic:
    """``terms`` values in ``[low, high]`` joined by ``operators`` (cycled, or drawn at random).

    The defaults reproduce the paper's task. Answers are exact integers computed with the usual
    precedence (``*`` before ``+`` and ``-``).
    """

    terms: int = 6
    low: int = 0
    high: int = 29
    operators: str = "+*+-*"
    random_operators: bool = False
    seed: int = 0
    name: ClassVar[str] = "arithmetic"

    def __post_init__(self) -> None:
        if self.terms < 2:
            raise ValueError(f"terms must be at least 2, got {self.terms!r}")
        if self.low > self.high:
            raise ValueError(f"low must not exceed high, got low={self.low!r}, high={self.high!r}")
        bad = set(self.operators) - set("+-*")
        if not self.operators or bad:
            raise ValueError(
                f"operators must be a non-empty string of '+', '-', '*', got {self.operators!r}"
            )

    def load(self, split: str, n: int | None = None) -> list[Problem]:
        """The first ``n`` (default 1000) problems of ``split``, the same ones on every call."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; arithmetic has {SPLITS}")
        n = DEFAULT_N if n is None else n
        rng = random.Random(f"arithmetic:{self.seed}:{split}")
        seen: set[str] = set()
        problems: list[Problem] = []
        misses = 0
        while len(problems) < n:
            values = [rng.randint(self.low, self.high) for _ in range(self.terms)]
            ops = [self._operator(rng, i) for i in range(self.terms - 1)]
            question = _format(values, ops)
            if question in seen or _split_of(question) != split:
                misses += 1
                if misses > _MAX_MISSES:
                    raise ValueError(
                        f"{self!r} yields only {len(problems)} distinct {split} problems, "
                        f"{n} were asked for; widen low..high, add terms or ask for fewer"
                    )
                continue
            misses = 0
            seen.add(question)
            problem_id = f"arithmetic-{split}-{len(problems):05d}"
            problems.append(Problem(problem_id, question, str(_evaluate(values, ops))))
        return problems

    def question_prompt(self, problem: Problem) -> str:
        """The paper's arithmetic prompt, asking for a boxed number like its MATH prompt."""
        return (
            f"What is the result of {problem.question}? Make sure to state your answer at the "
            "end of the response. Your final answer should be a single number, in the form "
            "\\boxed{answer}, at the end of your response."
        )

    def extract_answer(self, text: str) -> str | None:
        """The boxed number, else the last number in the reply."""
        return extract_number(text)

    def is_equivalent(self, answer: str, reference: str) -> bool:
        """Exact numeric equality ("42", "42.0" and "84/2" all match 42)."""
        value = to_number(answer)
        return value is not None and value == to_number(reference)

    def _operator(self, rng: random.Random, slot: int) -> str:
        if self.random_operators:
            return rng.choice(sorted(set(self.operators)))
        return self.operators[slot % len(self.operators)]


def _format(values: list[int], ops: list[str]) -> str:
    """``a+b*c...`` as in the paper; negative values in parentheses so the text stays plain."""
    shown = [f"({v})" if v < 0 else str(v) for v in values]
    return shown[0] + "".join(op + v for op, v in zip(ops, shown[1:], strict=True))


def _evaluate(values: list[int], ops: list[str]) -> int:
    """The value with ``*`` binding tighter than ``+``/``-``, left to right, without eval."""
    total, sign, product = 0, 1, values[0]
    for op, value in zip(ops, values[1:], strict=True):
        if op == "*":
            product *= value
        else:
            total += sign * product
            sign, product = (1 if op == "+" else -1), value
    return total + sign * product


def _split_of(question: str) -> str:
    """The split an expression belongs to, fixed by its hash so splits can never overlap."""
    bucket = int(hashlib.sha1(question.encode()).hexdigest(), 16) % 5
    return "test" if bucket < _TEST_BUCKETS else "train"
