"""GSM8K grade-school word problems, loaded through ``datasets`` from local files or the hub.

Local files come first, so an offline machine never reaches for the network: explicit
``data_files``, else ``{data_dir or $MAFL_DATA_DIR}/gsm8k/{split}.jsonl``, else ``openai/gsm8k``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from mafl_graph.grading import Verdict, extract_number, grade, is_equivalent, to_number
from mafl_graph.tasks.base import Problem
from mafl_graph.tasks.files import (
    hub_rows,
    local_file,
    read_rows,
    require_fields,
    row_name,
)


@dataclass(frozen=True)
class GSM8K:
    """GSM8K rows ``{"question", "answer"}``; the reference is what follows ``####``."""

    data_files: Mapping[str, str] | None = None
    data_dir: str | None = None
    name: ClassVar[str] = "gsm8k"

    def load(self, split: str, n: int | None = None) -> list[Problem]:
        """The first ``n`` problems of ``split`` in file order."""
        path = local_file(split, self.data_files, self.data_dir, "gsm8k")
        if path is None:
            rows = hub_rows("openai/gsm8k", split, n, config="main", subdir="gsm8k")
            source = f"openai/gsm8k ({split})"
        else:
            rows, source = read_rows(path, n), path
        problems = []
        for i, row in enumerate(rows):
            question, solution = require_fields(row, ("question", "answer"), source, i)
            if "####" not in solution:
                raise ValueError(
                    f"{row_name(source, i)}: the answer has no '#### <number>' line; GSM8K "
                    "answers end with '#### ' and the final number"
                )
            reference = solution.rsplit("####", 1)[1].strip()
            if to_number(reference) is None:
                # A reference that is no number can never be matched: refuse it here rather
                # than count every answer to it wrong.
                raise ValueError(
                    f"{row_name(source, i)}: the answer's '#### ' line holds {reference!r}, not "
                    "a number; GSM8K answers end with '#### ' and the final number"
                )
            reference = reference.replace(",", "")
            problems.append(Problem(f"gsm8k-{split}-{i:05d}", question, reference))
        return problems

    def question_prompt(self, problem: Problem) -> str:
        """The paper's GSM prompt."""
        return (
            f"Can you solve the following math problem? {problem.question} Explain your "
            "reasoning. Your final answer should be a single numerical number, in the form "
            "\\boxed{answer}, at the end of your response."
        )

    def extract_answer(self, text: str) -> str | None:
        """The boxed number, else the last number in the reply."""
        return extract_number(text)

    def is_equivalent(self, answer: str, reference: str) -> bool:
        """Equal by value (see :func:`mafl_graph.grading.is_equivalent`)."""
        return is_equivalent(answer, reference)

    def grade(self, answer: str, reference: str) -> Verdict:
        """As :meth:`is_equivalent`, or UNDECIDED where the symbolic check ran out of time."""
        return grade(answer, reference)
