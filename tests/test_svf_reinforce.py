"""REINFORCE of SVF experts on the embedded SmolLM2 (an expert on its last two layers' MLPs,
decomposed into a temporary cache): the step follows the reward, the KL term, validation,
early stopping, resuming, and refused settings. Tasks are scripted so that rewards do not
depend on what the model says."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from mafl_graph.grading import Verdict  # noqa: E402
from mafl_graph.svf import SVFExpert  # noqa: E402
from mafl_graph.svf.reinforce import (  # noqa: E402
    ReinforceConfig,
    generate,
    load_policy,
    policy_loss,
    prompt_ids,
    reinforce_step,
    train_reinforce,
)
from mafl_graph.tasks.base import Problem  # noqa: E402

LAYERS = (-2, -1)
SMALL = ReinforceConfig(batch_size=2, max_new_tokens=6, layers=LAYERS, validate_every=1)


class Scripted:
    """A task whose verdict on a problem comes from ``verdict(problem)``, whatever the reply."""

    name = "scripted"

    def __init__(self, verdict: Callable[[Problem], Verdict]) -> None:
        self.verdict = verdict
        self.graded = 0

    def load(self, split: str, n: int | None = None) -> list[Problem]:
        return []

    def question_prompt(self, problem: Problem) -> str:
        return problem.question

    def extract_answer(self, text: str) -> str | None:
        return text

    def is_equivalent(self, answer: str, reference: str) -> bool:
        raise AssertionError("grade decides")

    def grade(self, answer: str, reference: str) -> Verdict:
        raise AssertionError("replaced per problem")

    def for_problem(self, problem: Problem) -> Scripted:
        bound = Scripted(self.verdict)
        bound.grade = lambda answer, reference: self._count(problem)  # type: ignore[method-assign]
        return bound

    def _count(self, problem: Problem) -> Verdict:
        self.graded += 1
        return self.verdict(problem)


PROBLEMS = [
    Problem("train-0", "What is 2 plus 3?", "5"),
    Problem("train-1", "Name a colour.", "red"),
]
VALIDATION = [Problem("val-0", "What is 1 plus 1?", "2"), Problem("val-1", "Say hi.", "hi")]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the cores are shared, and threads waiting on each other are slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    try:
        from mafl_graph.local import smollm2_gguf_path

        smollm2_gguf_path()
    except (ImportError, FileNotFoundError) as error:
        pytest.skip(f"embedded model unavailable: {error}")
    cache = tmp_path_factory.mktemp("svf")
    return (*load_policy("smollm2", SMALL, cache_dir=cache), cache)


def likelihood(policy, expert, rollouts):
    model, _, decomposition, _ = policy
    with torch.no_grad():
        _, ll, _ = policy_loss(model, decomposition, expert, rollouts, [0.0] * len(rollouts))
    return ll


@pytest.mark.parametrize(("verdict", "sign"), [(Verdict.EQUIVALENT, 1), (Verdict.DIFFERENT, -1)])
def test_a_step_moves_the_rollouts_likelihood_with_the_reward(policy, verdict, sign):
    model, tokenizer, decomposition, _ = policy
    expert = SVFExpert.init(decomposition, seed=0)
    config = replace(SMALL, learning_rate=0.05)
    optimizer = torch.optim.Adam(expert.parameters(), lr=config.learning_rate)
    task = Scripted(lambda p: verdict)
    start = time.perf_counter()
    result = reinforce_step(
        model, tokenizer, decomposition, expert, optimizer, task, PROBLEMS, config
    )
    print(
        f"REINFORCE step (2 problems, 6 new tokens, 2 layers): {time.perf_counter() - start:.2f} s"
    )
    assert result.rewards == [float(sign)] * 2 and result.reward == sign
    assert all(0 < len(r.completion) <= 6 for r in result.rollouts)
    before = SVFExpert.init(decomposition, seed=0)
    moved = likelihood(policy, expert, result.rollouts) - likelihood(
        policy, before, result.rollouts
    )
    assert (torch.sign(moved) == sign).all(), moved


def test_an_undecided_grade_leaves_z_alone(policy):
    model, tokenizer, decomposition, _ = policy
    expert = SVFExpert.init(decomposition, seed=0)
    before = {k: v.detach().clone() for k, v in expert.z.items()}
    optimizer = torch.optim.Adam(expert.parameters(), lr=0.05)
    task = Scripted(lambda p: Verdict.UNDECIDED)
    result = reinforce_step(
        model, tokenizer, decomposition, expert, optimizer, task, PROBLEMS, SMALL
    )
    assert result.rewards == [0.0, 0.0]
    assert all(torch.equal(before[k], v) for k, v in expert.z.items())


def test_the_kl_term_is_zero_at_the_base_and_positive_and_differentiable_after(policy):
    model, tokenizer, decomposition, _ = policy
    prompts = [prompt_ids(tokenizer, Scripted(lambda p: Verdict.EQUIVALENT), p) for p in PROBLEMS]
    identity = SVFExpert.identity(decomposition)
    rollouts = generate(model, tokenizer, decomposition, identity, prompts, max_new_tokens=4)
    _, _, kl = policy_loss(model, decomposition, identity, rollouts, [0, 0], kl_coefficient=1.0)
    assert kl.abs().max() < 1e-4, kl
    moved = SVFExpert.init(decomposition, seed=3, std=1.0)
    model.train()  # activation checkpointing, as in a step
    try:
        _, _, kl = policy_loss(
            model, decomposition, moved, rollouts, [0, 0], kl_coefficient=1.0, backward=True
        )
    finally:
        model.eval()
    assert (kl > 1e-4).all(), kl
    assert all(z.grad is not None and z.grad.abs().sum() > 0 for z in moved.z.values())


def test_validation_keeps_the_best_expert_and_stops_early(policy, tmp_path):
    # Validation accuracy by validation round: 0.5, 1.0, 0.5, 0.5 -> best at step 2, and two
    # rounds without improvement stop the run at step 4 of 10.
    rounds = iter([(1, 0), (1, 1), (0, 1), (1, 0)])
    current: dict[str, tuple[int, int]] = {}

    def verdict(problem: Problem) -> Verdict:
        if problem.id.startswith("train"):
            return Verdict.EQUIVALENT
        if problem.id == "val-0":
            current["round"] = next(rounds)
        right = current["round"][int(problem.id[-1])]
        return Verdict.EQUIVALENT if right else Verdict.DIFFERENT

    task = Scripted(verdict)
    config = replace(SMALL, steps=10, patience=2)
    result = train_reinforce(
        task,
        PROBLEMS,
        VALIDATION,
        out_dir=tmp_path,
        config=config,
        cache_dir=policy[3],
        progress=False,
    )
    assert [e["validation_accuracy"] for e in result.curve] == [0.5, 1.0, 0.5, 0.5]
    assert result.stopped_early and result.best_step == 2 and result.validation_accuracy == 1.0
    assert [e["train_reward"] for e in result.curve] == [1.0] * 4
    best = SVFExpert.load(result.expert_path, policy[2])
    assert best.settings["reinforce"]["step"] == 2
    assert (tmp_path / "curve.json").is_file() and not (tmp_path / "optimizer.pt").exists()
    print(f"seconds per step: {result.seconds_per_step:.2f}")

    # A finished run is returned as it is, without grading anything again.
    graded = task.graded
    again = train_reinforce(
        task, PROBLEMS, VALIDATION, out_dir=tmp_path, config=config, cache_dir=policy[3]
    )
    assert again == result and task.graded == graded
    with pytest.raises(ValueError, match="other settings .*config"):
        train_reinforce(
            task, PROBLEMS, VALIDATION, out_dir=tmp_path, config=replace(config, steps=11)
        )


def test_settings_are_checked():
    with pytest.raises(
        ValueError, match="dtype must be one of float32, bfloat16, float16; got 'fp8'"
    ):
        ReinforceConfig(dtype="fp8")
    with pytest.raises(ValueError, match="set temperature > 0"):
        ReinforceConfig(rollouts=4)
    with pytest.raises(ValueError, match="batch_size must be at least 1; got 0"):
        ReinforceConfig(batch_size=0)
    with pytest.raises(ValueError, match="patience must be at least 1"):
        ReinforceConfig(patience=0)
    assert ReinforceConfig().learning_rate == 2e-3 and ReinforceConfig().kl_coefficient == 0.0


def test_an_interrupted_run_resumes_from_its_last_validation(policy, tmp_path):
    calls = {"train": 0}

    def verdict(problem: Problem) -> Verdict:
        if problem.id.startswith("train"):
            calls["train"] += 1
            if calls["train"] == 5:  # the first rollout of step 3
                raise KeyboardInterrupt
        return Verdict.EQUIVALENT

    config = replace(SMALL, steps=3, validate_every=2)
    run = dict(out_dir=tmp_path, config=config, cache_dir=policy[3], progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_reinforce(Scripted(verdict), PROBLEMS, VALIDATION, **run)
    assert (tmp_path / "optimizer.pt").is_file() and not (tmp_path / "result.json").exists()
    result = train_reinforce(Scripted(verdict), PROBLEMS, VALIDATION, **run)
    assert [e["step"] for e in result.curve] == [1, 2, 3]
    assert [e["validation_accuracy"] for e in result.curve] == [None, 1.0, 1.0]
    assert calls["train"] == 2 * 3 + 1 and result.best_step == 2


def test_sampled_rollouts_give_several_replies_per_problem(policy):
    model, tokenizer, decomposition, _ = policy
    expert = SVFExpert.init(decomposition, seed=0)
    optimizer = torch.optim.Adam(expert.parameters(), lr=SMALL.learning_rate)
    config = replace(SMALL, rollouts=3, temperature=1.0, max_new_tokens=4)
    task = Scripted(lambda p: Verdict.DIFFERENT)
    result = reinforce_step(
        model, tokenizer, decomposition, expert, optimizer, task, PROBLEMS[:1], config
    )
    assert len(result.rollouts) == 3 and result.rewards == [-1.0] * 3
    assert all(r.prompt == result.rollouts[0].prompt for r in result.rollouts)
