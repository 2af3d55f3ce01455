"""DeepMind Mathematics: deterministic generation, disjoint splits, every module's answers
parsed under its kind, grading by kind, refusals and extraction."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy

from mafl_graph.grading import Verdict
from mafl_graph.tasks import dm_math as dm
from mafl_graph.tasks import get_task
from mafl_graph.tasks.dm_answers import MODULE_KINDS, Kind, check_reference, grade_as, kind_of
from mafl_graph.tasks.dm_math import DeepMindMath

EQ, DIFF = Verdict.EQUIVALENT, Verdict.DIFFERENT


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAFL_CACHE_DIR", str(tmp_path / "cache"))


def _pairs(task: DeepMindMath, split: str, n: int) -> list[tuple[str, str, str | None]]:
    return [(p.id, p.question, p.answer) for p in task.load(split, n)]


def test_same_seed_same_problems_and_another_seed_others() -> None:
    task = DeepMindMath("algebra__linear_1d_composed", "train-medium", seed=3)
    first = _pairs(task, "train", 12)
    assert first == _pairs(
        DeepMindMath("algebra__linear_1d_composed", "train-medium", seed=3), "train", 12
    )
    other = _pairs(DeepMindMath("algebra__linear_1d_composed", "train-medium", seed=4), "train", 12)
    assert {q for _, q, _ in first}.isdisjoint({q for _, q, _ in other})
    assert _pairs(task, "train", 5) == first[:5]  # a shorter load is a prefix


def test_generation_ignores_and_keeps_the_callers_random_state() -> None:
    random.seed(123)
    np.random.seed(123)
    shown = _pairs(DeepMindMath("numbers__is_prime_composed", seed=1), "train", 5)
    after = random.random(), np.random.random()
    random.seed(123)
    np.random.seed(123)
    assert (random.random(), np.random.random()) == after  # nothing was drawn from them
    random.seed(999)
    np.random.seed(999)
    shutil.rmtree(Path(os.environ["MAFL_CACHE_DIR"]))  # made again, not read back
    assert _pairs(DeepMindMath("numbers__is_prime_composed", seed=1), "train", 5) == shown


def test_another_process_and_hash_seed_make_the_same_problems(tmp_path: Path) -> None:
    # Variable names follow set order (string hashes) in the package itself, and sympy's
    # randprime has its own generator: both are pinned, so another process agrees.
    modules = ["numbers__is_prime", "polynomials__expand", "comparison__sort_composed"]
    script = (
        "import json, sys\n"
        "from mafl_graph.tasks.dm_math import DeepMindMath\n"
        "print(json.dumps({m: [[p.question, p.answer] for p in "
        "DeepMindMath(m, 'train-hard', seed=2).load('train', 4)] for m in sys.argv[1:]}))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "7", "MAFL_CACHE_DIR": str(tmp_path / "other")}
    out = subprocess.run(
        [sys.executable, "-c", script, *modules],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    here = {
        m: [[p.question, p.answer] for p in DeepMindMath(m, "train-hard", seed=2).load("train", 4)]
        for m in reversed(modules)  # in another order, after other generation
    }
    assert json.loads(out) == here


def test_splits_are_disjoint_and_ids_unique_and_tagged() -> None:
    task = DeepMindMath("comparison__pair", "interpolate")
    train, test = task.load("train", 60), task.load("test", 15)
    assert {p.question for p in train}.isdisjoint({p.question for p in test})
    assert len({p.question for p in train}) == 60
    ids = [p.id for p in train + test]
    assert len(set(ids)) == len(ids)
    assert train[3].id == "dm-math-comparison__pair-train-00003"
    assert test[0].id == "dm-math-comparison__pair-test-00000"
    assert all("/" not in i and ":" not in i for i in ids)
    assert train[0].metadata == {"module": "comparison__pair", "difficulty": "interpolate"}
    other = DeepMindMath("numbers__gcd").load("train", 3)
    assert not {p.id for p in other} & set(ids)


def test_module_lists() -> None:
    names = dm.module_names()
    assert len(names) == 56 and set(names) == set(MODULE_KINDS)
    assert {"algebra__linear_1d", "numbers__gcd", "measurement__conversion"} <= set(names)
    assert dm.working_modules() == names and dm.refused_modules() == {}
    assert {kind for kinds in MODULE_KINDS.values() for kind in kinds} == set(Kind)
    assert dm.composed_modules() == dm.COMPOSED_MODULES
    assert len(dm.COMPOSED_MODULES) == 17
    assert all(m.endswith("_composed") for m in dm.COMPOSED_MODULES)


@pytest.mark.parametrize("difficulty", dm.DIFFICULTIES)
def test_every_module_generates_answers_of_its_kinds(difficulty: str) -> None:
    for module in dm.working_modules():
        problems = DeepMindMath(module, difficulty).load("train", 4)
        assert len(problems) == 4, module
        for problem in problems:
            assert problem.answer is not None
            assert kind_of(module, problem.answer) is not None, (module, problem.answer)
            assert grade_as(module, problem.answer, problem.answer) is EQ, (module, problem)


def test_every_expression_answer_matches_its_latex_and_not_a_changed_one() -> None:
    # The references are sympy syntax; a reply is as likely LaTeX. The reference is trusted
    # generator output, so sympify may read it here.
    for module, kinds in MODULE_KINDS.items():
        if not {Kind.EXPRESSION, Kind.FACTORED, Kind.SIMPLIFIED} & set(kinds):
            continue
        for problem in DeepMindMath(module, "train-medium").load("train", 4):
            reference = problem.answer
            assert reference is not None
            kind = kind_of(module, reference)
            if kind not in (Kind.EXPRESSION, Kind.FACTORED, Kind.SIMPLIFIED):
                continue
            value = sympy.sympify(reference)
            assert grade_as(module, sympy.latex(value), reference) is EQ, (module, reference)
            assert grade_as(module, sympy.latex(value + 1), reference) is DIFF, module


def test_formerly_numpy_1_modules_work_and_numpy_is_untouched() -> None:
    # polynomials__* and calculus__* call ndarray.itemset and np.object, gone in numpy 2.
    for module in ("polynomials__expand", "calculus__differentiate", "polynomials__collect"):
        assert len(DeepMindMath(module).load("train", 3)) == 3
    assert not hasattr(np.ndarray, "itemset")
    assert "object" not in vars(np)


def test_a_generation_that_raises_yields_no_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}

    class Made:
        def __init__(self, question: str) -> None:
            self.question, self.answer = question, "7"

    def flaky() -> Made:
        calls["n"] += 1
        made = Made(f"What is question {calls['n']}?")
        if calls["n"] % 2:
            raise AttributeError("half made")
        return made

    modules = dict(dm._modules("train-easy"))
    modules["numbers__gcd"] = flaky
    monkeypatch.setattr(dm, "_modules", lambda difficulty: modules)
    problems = DeepMindMath("numbers__gcd").load("train", 5)
    assert all(int(p.question.split()[3].rstrip("?")) % 2 == 0 for p in problems)

    def broken() -> Made:
        raise AttributeError("'numpy.ndarray' object has no attribute 'itemset'")

    modules["numbers__lcm"] = broken
    with pytest.raises(RuntimeError, match="numbers__lcm.*failed 50 generations.*itemset"):
        DeepMindMath("numbers__lcm").load("train", 1)


def test_the_cache_serves_a_second_load_and_survives_corruption(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task = DeepMindMath("probability__swr_p_sequence", seed=9)
    first = _pairs(task, "test", 3)
    files = list((Path(os.environ["MAFL_CACHE_DIR"]) / "dm_math").glob("*.json"))
    assert len(files) == 1

    def never() -> None:
        raise AssertionError("generated again")

    monkeypatch.setitem(dm._modules("train-easy"), "probability__swr_p_sequence", never)
    assert _pairs(task, "test", 3) == first
    assert _pairs(task, "train", 2) == _pairs(task, "train", 2)
    monkeypatch.undo()
    files[0].write_text("{not json")
    assert _pairs(task, "test", 3) == first


def test_refusals_say_what_is_wrong() -> None:
    with pytest.raises(
        ValueError,
        match="unknown dm-math module 'algebra__linear1d'.*did you mean algebra__linear_1d",
    ):
        DeepMindMath("algebra__linear1d")
    with pytest.raises(ValueError, match="unknown difficulty 'hard'.*train-hard"):
        DeepMindMath(difficulty="hard")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        DeepMindMath().load("dev", 1)
    with pytest.raises(ValueError, match="must not be negative"):
        DeepMindMath().load("train", -1)
    with pytest.raises(ValueError, match="gave the answer 'x = 3'.*none of its kinds"):
        check_reference("numbers__gcd", "x = 3")
    with pytest.raises(ValueError, match="no answer kind"):
        grade_as("numbers__unknown", "1", "1")


def test_a_refused_module_is_refused_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(dm._REFUSED, "numbers__gcd", "it needs numpy 1 (ndarray.itemset)")
    with pytest.raises(ValueError, match="'numbers__gcd' is refused: it needs numpy 1"):
        DeepMindMath("numbers__gcd")
    assert "numbers__gcd" not in dm.working_modules()


def test_registry_builds_it() -> None:
    task = get_task("dm-math", module="numbers__gcd", difficulty="train-hard", seed=1)
    assert isinstance(task, DeepMindMath) and task.name == "dm-math"


@pytest.mark.parametrize(
    ("module", "answer", "reference", "verdict"),
    [
        # numbers: by value, and only numbers
        ("arithmetic__add_or_sub", "0.5", "1/2", EQ),
        ("arithmetic__add_or_sub", "\\frac{1}{2}", "0.5", EQ),
        ("arithmetic__add_or_sub", "-\\frac{1}{5}", "-0.2", EQ),
        ("arithmetic__add_or_sub", "5 \\times 10^{-1}", "0.5", EQ),
        ("algebra__linear_1d", "x = -3", "-3", EQ),
        ("arithmetic__add_or_sub", "17455.8615", "17455.86153", DIFF),
        ("arithmetic__add_or_sub", "2 + 3", "5", DIFF),
        ("arithmetic__add_or_sub", "five", "5", DIFF),
        # expressions, in sympy syntax or LaTeX
        ("calculus__differentiate", "3x^2 + 2", "3*x**2 + 2", EQ),
        ("calculus__differentiate", "3*x**2 + 2", "3*x**2 + 2", EQ),
        ("calculus__differentiate", "8c", "8*c", EQ),
        ("calculus__differentiate", "5*x**7 + 2", "3*x**2 + 2", DIFF),
        ("calculus__differentiate", "3*x**3 + 2", "3*x**2 + 2", DIFF),
        ("calculus__differentiate", "__import__('os')", "3*x**2 + 2", DIFF),
        # simplified forms: equal and simplified
        ("arithmetic__simplify_surd", "121 - 48\\sqrt{3}", "121 - 48*sqrt(3)", EQ),
        ("arithmetic__simplify_surd", "-48*sqrt(3) + 121", "121 - 48*sqrt(3)", EQ),
        ("arithmetic__simplify_surd", "9072 - \\sqrt{7}", "9072 - sqrt(7)", EQ),
        ("arithmetic__simplify_surd", "121 - 24\\sqrt{12}", "121 - 48*sqrt(3)", DIFF),
        ("arithmetic__simplify_surd", "(4\\sqrt{3} - 6)^2 + 1", "85 - 48*sqrt(3)", DIFF),
        ("arithmetic__simplify_surd", "122 - 48*sqrt(3)", "121 - 48*sqrt(3)", DIFF),
        ("polynomials__expand", "2 + 3x^2", "3*x**2 + 2", EQ),
        ("polynomials__expand", "(x+1)(x-1)", "x**2 - 1", DIFF),
        ("polynomials__collect", "3x + 2x", "5*x", DIFF),
        ("polynomials__simplify_power", "\\frac{1}{m^{139/6}}", "m**(-139/6)", EQ),
        ("polynomials__simplify_power", "m^{-23} \\cdot m^{-1/6}", "m**(-139/6)", DIFF),
        # factorisations: equal and fully factored
        (
            "algebra__polynomial_roots",
            "-\\frac{2}{9}(u-2)(u-1)(u+1)",
            "-2*(u - 2)*(u - 1)*(u + 1)/9",
            EQ,
        ),
        (
            "algebra__polynomial_roots",
            "(2-u)(u-1)(u+1) \\cdot 2/9",
            "-2*(u - 2)*(u - 1)*(u + 1)/9",
            EQ,
        ),
        (
            "algebra__polynomial_roots",
            "-2/9*(u**3 - 2*u**2 - u + 2)",
            "-2*(u - 2)*(u - 1)*(u + 1)/9",
            DIFF,
        ),
        ("algebra__polynomial_roots", "3(b-1)(b^2+b-2)", "3*(b - 1)**2*(b + 2)", DIFF),
        # sets of roots or prime factors: any order, each once
        ("algebra__polynomial_roots", "9, -1/5", "-1/5, 9", EQ),
        ("algebra__polynomial_roots", "x = 9, x = -0.2", "-1/5, 9", EQ),
        ("algebra__polynomial_roots", "\\{-\\frac{1}{5}, 9\\}", "-1/5, 9", EQ),
        ("algebra__polynomial_roots", "-1/5, 9, 9", "-1/5, 9", DIFF),
        ("numbers__list_prime_factors", "7846693, 5", "5, 7846693", EQ),
        ("numbers__list_prime_factors", "5", "5, 7846693", DIFF),
        # sorted lists: in order
        ("comparison__sort", "-1/5, 9", "-1/5, 9", EQ),
        ("comparison__sort", "9, -1/5", "-1/5, 9", DIFF),
        ("comparison__sort_composed", "u, 3, 4, 9", "u, 3, 4, 9", EQ),
        ("comparison__sort_composed", "3, u, 4, 9", "u, 3, 4, 9", DIFF),
        # booleans
        ("numbers__is_prime", "false", "False", EQ),
        ("numbers__is_prime", "No", "False", EQ),
        ("numbers__is_prime", "\\text{True}", "True", EQ),
        ("numbers__is_prime", "True", "False", DIFF),
        ("numbers__is_prime", "maybe", "False", DIFF),
        # option letters, variables, values
        ("comparison__kth_biggest", "(b)", "b", EQ),
        ("comparison__kth_biggest", "b", "b", EQ),
        ("comparison__kth_biggest", "c", "b", DIFF),
        ("comparison__pair", "0.04", "1/25", EQ),
        ("comparison__pair", "yes", "True", EQ),
        # times of day, exactly
        ("measurement__time", "6:40 AM", "6:40 AM", EQ),
        ("measurement__time", "06:40am", "6:40 AM", EQ),
        ("measurement__time", "18:40", "6:40 PM", EQ),
        ("measurement__time", "6:40 PM", "6:40 AM", DIFF),
        ("measurement__time", "6:41 AM", "6:40 AM", DIFF),
        ("measurement__time", "236", "236", EQ),
        # digits in a base
        ("numbers__base_conversion", "-28A91", "-28a91", EQ),
        ("numbers__base_conversion", "-28a91_{16}", "-28a91", EQ),
        ("numbers__base_conversion", "28a91", "-28a91", DIFF),
        ("arithmetic__add_or_sub_in_base", "10", "2", DIFF),
    ],
)
def test_grading_by_kind(module: str, answer: str, reference: str, verdict: Verdict) -> None:
    task = DeepMindMath(module)
    assert task.grade(answer, reference) is verdict
    assert task.is_equivalent(answer, reference) is (verdict is EQ)


def test_a_huge_expression_is_undecided_or_refused_not_hung() -> None:
    task = DeepMindMath("calculus__differentiate")
    assert task.grade("9^{9^{9^{9}}}", "3*x**2 + 2") is DIFF
    assert task.grade("(x+y+z+w)^{400}", "3*x**2 + 2") in (DIFF, Verdict.UNDECIDED)


def test_extraction_and_prompt() -> None:
    numbers = DeepMindMath("arithmetic__add_or_sub")
    assert numbers.extract_answer("so \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert numbers.extract_answer("the sum is 12, so 13") == "13"
    assert numbers.extract_answer("It is 13. \\boxed{answer}") == "13"
    lists = DeepMindMath("comparison__sort")
    assert lists.extract_answer("\\boxed{-1/5, 9}") == "-1/5, 9"
    assert lists.extract_answer("the order is -1/5, 9") is None
    booleans = DeepMindMath("numbers__is_prime")
    assert booleans.extract_answer("it is prime: \\boxed{\\text{True}}") == "\\text{True}"
    assert booleans.extract_answer("True") is None
    problem = numbers.load("test", 1)[0]
    prompt = numbers.question_prompt(problem)
    assert problem.question in prompt and "\\boxed{answer}" in prompt


@pytest.mark.parametrize(
    ("module", "replies", "clusters"),
    [
        # replies in no reference form ("14*q", an equation) are compared, never an error
        ("algebra__linear_1d", ["14*q", "x = -3", "-3", "\\frac{-6}{2}", "m + 2 = 10m"], 3),
        ("arithmetic__add_or_sub", ["2*3=6", "0.5", "1/2", "\\frac{1}{2}", "2.3389+1.4456"], 3),
        ("comparison__pair", ["3.14159*1", "True", "yes", "(b)", "b", "false"], 4),
        ("numbers__list_prime_factors", ["2, 3", "3, 2", "{2,3}", "2, 5"], 2),
        ("comparison__sort", ["1, 2, 3", "3, 2, 1", "[1,2,3]"], 2),
        ("measurement__time", ["6:40 AM", "06:40am", "18:40", "6:40 PM"], 2),
    ],
)
def test_the_vote_clusters_replies_by_value(module: str, replies: list[str], clusters: int) -> None:
    from mafl_graph.grading import majority_vote
    from mafl_graph.tasks.base import grade_answer

    task = DeepMindMath(module)
    vote = majority_vote(replies, equivalent=lambda a, b: grade_answer(task, a, b))
    assert len(vote.clusters) == clusters, vote.clusters


def test_a_debate_with_replies_in_any_form_is_voted_and_graded() -> None:
    from fakes import ScriptedModel

    from mafl_graph import Society, create_debate_graph, run_debates
    from mafl_graph.society import Agent

    task = DeepMindMath("algebra__linear_1d")
    [problem] = task.load("test", 1)
    replies = ["14*q", f"x = {problem.answer}", f"{problem.answer}"]
    models = [ScriptedModel(reply=lambda m, r=r: f"\\boxed{{{r}}}") for r in replies]
    agents = tuple(Agent(f"agent{i}", m, m) for i, m in enumerate(models))
    society = Society(agents=agents, summarizer=ScriptedModel())
    graph = create_debate_graph(society, task, rounds=1)
    [result] = run_debates(graph, [problem], run_id="dm", progress=False)
    assert result.ok, result.error
    assert result.correct is True and result.consensus == f"x = {problem.answer}"
