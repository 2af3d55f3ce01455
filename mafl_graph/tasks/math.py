"""MATH competition problems (the MATH-500 test set by default), loaded through ``datasets``.

Local files come first: explicit ``data_files``, else ``{data_dir or $MAFL_DATA_DIR}/math500/
{split}.jsonl`` with full reference solutions, else ``HuggingFaceH4/MATH-500`` (test only).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from mafl_graph.grading import Verdict, extract_boxed, grade, is_equivalent
from mafl_graph.tasks.base import Problem
from mafl_graph.tasks.files import (
    DATA_DIR_ENV,
    hub_rows,
    local_file,
    read_rows,
    require_fields,
    row_name,
)

_ANSWER_IS = "The answer is:"


def math_prompt(question: str) -> str:
    """The paper's MATH prompt: a bullet-point summary and one boxed answer."""
    return (
        f"Can you solve the following math problem? {question} Provide a bullet point summary "
        "of your reasoning. Your final answer should be a single answer, in the form "
        "\\boxed{answer}, at the end of your response."
    )


@dataclass(frozen=True)
class MATH:
    """MATH rows ``{"question", "answer"}`` where ``answer`` is a worked solution whose
    ``\\boxed{...}`` (or closing "The answer is: X") is the reference."""

    data_files: Mapping[str, str] | None = None
    data_dir: str | None = None
    name: ClassVar[str] = "math"

    def load(self, split: str, n: int | None = None) -> list[Problem]:
        """The first ``n`` problems of ``split`` in file order."""
        root = self.data_dir or os.environ.get(DATA_DIR_ENV)
        own_split = root is not None and (Path(root) / "math500" / f"{split}.jsonl").is_file()
        if split != "test" and self.data_files is None and not own_split:
            raise ValueError(
                f"MATH-500 has only a 'test' split, not {split!r}; for other splits put "
                f"math500/{split}.jsonl in --data-dir (data_dir=) or pass "
                f"data_files={{{split!r}: 'path/to/{split}.jsonl'}}, with rows "
                '{"question", "answer"}'
            )
        path = local_file(split, self.data_files, self.data_dir, "math500")
        problems = []
        if path is None:
            rows = hub_rows("HuggingFaceH4/MATH-500", split, n, subdir="math500")
            for i, row in enumerate(rows):
                source = f"HuggingFaceH4/MATH-500 ({split})"
                question, answer = require_fields(row, ("problem", "answer"), source, i)
                problems.append(Problem(f"math-{split}-{i:05d}", question, answer.strip()))
            return problems
        for i, row in enumerate(read_rows(path, n)):
            question, solution = require_fields(row, ("question", "answer"), path, i)
            reference: str | None = extract_boxed(solution)
            if reference is None and _ANSWER_IS in solution:
                reference = solution.rsplit(_ANSWER_IS, 1)[1].strip() or None
            if reference is None:
                raise ValueError(
                    f"{row_name(path, i)}: the answer has neither \\boxed{{...}} nor "
                    f"'{_ANSWER_IS} X'; put the final answer in one of those forms"
                )
            problems.append(Problem(f"math-{split}-{i:05d}", question, reference))
        return problems

    def question_prompt(self, problem: Problem) -> str:
        """The paper's MATH prompt."""
        return math_prompt(problem.question)

    def extract_answer(self, text: str) -> str | None:
        """The boxed answer only: MATH answers are expressions, so a stray last number in the
        reply would be a guess, not an answer."""
        return extract_boxed(text)

    def is_equivalent(self, answer: str, reference: str) -> bool:
        """Equal as mathematics (math-verify, sympy underneath)."""
        return is_equivalent(answer, reference)

    def grade(self, answer: str, reference: str) -> Verdict:
        """As :meth:`is_equivalent`, or UNDECIDED where the symbolic check ran out of time."""
        return grade(answer, reference)
