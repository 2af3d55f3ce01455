"""Runs of SVF experts in a run directory: train one with REINFORCE on a task's grader, then
measure it against the base on held-out problems.

A run directory holds ``svf_run.json`` (the task, model, split sizes and REINFORCE settings; a
resumed run must have the same), ``reinforce/`` (:func:`~mafl_graph.svf.train_reinforce`'s
directory, the expert in ``reinforce/best``), ``evaluations/<label>.json`` (each test problem's
grade per model, written after every chunk, so an interrupted evaluation resumes where it
stopped) and ``svf_train.json``, the result that ``mafl report`` renders.

The held-out evaluation goes through the engine (:class:`~mafl_graph.local.LocalChatModel`,
greedy), as the society's agents do; the validation that picks the best step runs inside the
training loop on problems drawn from the train split, never on the test problems.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mafl_graph.evaluate import Accuracy, accuracy
from mafl_graph.grading import Verdict
from mafl_graph.models import HOSTED
from mafl_graph.rundir import write_json
from mafl_graph.tasks.base import Problem, Task, grade_answer, task_for

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from mafl_graph.config import TaskOptions
    from mafl_graph.svf.reinforce import ReinforceConfig

RUN_FILE = "svf_run.json"
RESULT_FILE = "svf_train.json"
EVALUATIONS = "evaluations"
REINFORCE_DIR = "reinforce"
CHUNK = 32
"""Test problems graded between two writes of an evaluation file."""

_TUNING_BACKEND = {"openai": "openai", "google_genai": "vertex"}


def local_model_path(model: str) -> str:
    """The local model a ``model`` option names (``smollm2``, ``local:smollm2``, a GGUF or HF
    directory); a hosted model is refused, naming that provider's tuning backend."""
    provider, _, name = model.partition(":")
    if name and provider in HOSTED:
        raise ValueError(
            f"{model!r} is a hosted model: it has no weights here to decompose, so SVF cannot "
            f"tune it; use its provider's tuning (`mafl tune --backend "
            f"{_TUNING_BACKEND[provider]}`), or a local model such as local:smollm2"
        )
    return name if name and provider == "local" else model


def grade_reply(task: Task, problem: Problem, text: str) -> bool | None:
    """True right, False wrong or unparseable, None undecided (grading ran out of time)."""
    if problem.answer is None:
        raise ValueError(f"Problem {problem.id!r} has no reference answer to grade against")
    bound = task_for(task, problem)
    verdict = grade_answer(bound, bound.extract_answer(text), problem.answer)
    return None if verdict is Verdict.UNDECIDED else verdict is Verdict.EQUIVALENT


def answer_flags(
    model: BaseChatModel,
    task: Task,
    problems: Sequence[Problem],
    *,
    concurrency: int = 16,
) -> list[bool | None]:
    """Each problem asked once (the task's question as the only message), each reply graded."""
    from langchain_core.messages import HumanMessage

    prompts = [[HumanMessage(task_for(task, p).question_prompt(p))] for p in problems]
    replies = model.batch(prompts, config={"max_concurrency": concurrency})  # type: ignore[arg-type]
    return [grade_reply(task, p, r.text) for p, r in zip(problems, replies, strict=True)]


@dataclass
class Evaluations:
    """Per-problem grades of labelled models on one problem set, kept in
    ``<root>/<label>.json`` and filled in chunks, so a grade once paid for is kept."""

    root: Path

    def flags(
        self,
        label: str,
        model: BaseChatModel | Callable[[], BaseChatModel],
        task: Task,
        problems: Sequence[Problem],
        *,
        concurrency: int = 16,
    ) -> list[bool | None]:
        """``label``'s grade of every problem; only the ones not yet recorded are asked.
        ``model`` may be a callable, made only when something is left to ask."""
        import json

        path = self.root / f"{label}.json"
        done: dict[str, bool | None] = json.loads(path.read_text()) if path.is_file() else {}
        todo = [p for p in problems if p.id not in done]
        if todo and callable(model) and not hasattr(model, "invoke"):
            model = model()
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start : start + CHUNK]
            flags = answer_flags(model, task, chunk, concurrency=concurrency)  # type: ignore[arg-type]
            done.update({p.id: f for p, f in zip(chunk, flags, strict=True)})
            write_json(path, done)
        return [done[p.id] for p in problems]


def paired_difference(
    after: Sequence[bool | None], before: Sequence[bool | None]
) -> dict[str, float]:
    """Mean and standard error of the per-problem difference (right = 1) of two models
    graded on the same problems: pairing removes the variance the problems share."""
    d = [float(bool(a)) - float(bool(b)) for a, b in zip(after, before, strict=True)]
    n = len(d)
    mean = sum(d) / n if n else 0.0
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    return {"mean": mean, "stderr": math.sqrt(var / n) if n else 0.0, "n": n}


def splits(
    task: Task, *, n_train: int, n_validation: int, n_test: int
) -> tuple[list[Problem], list[Problem], list[Problem]]:
    """Train and validation from the task's train split (disjoint), test from its test split."""
    for name, value in (("n_train", n_train), ("n_validation", n_validation), ("n_test", n_test)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1; got {value}")
    pool = task.load("train", n_train + n_validation)
    if len(pool) < n_train + n_validation:
        raise ValueError(
            f"{task.name} has {len(pool)} train problems, fewer than n_train + n_validation = "
            f"{n_train + n_validation}"
        )
    test = task.load("test", n_test)
    return pool[:n_train], pool[n_train:], test


def train_expert(
    task_options: TaskOptions,
    run_dir: str | Path,
    config: ReinforceConfig | None = None,
    *,
    model: str = "smollm2",
    n_train: int = 200,
    n_validation: int = 50,
    n_test: int = 100,
    concurrency: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """Train an SVF expert with REINFORCE on ``task_options``'s task (the loop's defaults
    where they differ: a+b up to 30 for arithmetic), or resume the run in ``run_dir``; grade
    the base and the best expert on ``n_test`` test problems.

    Returns (and writes to ``svf_train.json``) the settings, both accuracies, their paired
    difference with its standard error, the learning curve and the cost per step.
    """
    from mafl_graph.config import LOOP_TASK_DEFAULTS
    from mafl_graph.local import LocalChatModel
    from mafl_graph.svf.reinforce import ReinforceConfig, claim_settings, train_reinforce

    config = config or ReinforceConfig()
    model_path = local_model_path(model)
    task, task_settings = task_options.build(
        seed=config.seed, defaults=LOOP_TASK_DEFAULTS.get(task_options.task)
    )
    train, validation, test = splits(
        task, n_train=n_train, n_validation=n_validation, n_test=n_test
    )
    root = Path(run_dir).expanduser()
    settings = {
        "kind": "svf-train",
        "task": task.name,
        "task_options": task_settings,
        "model": model_path,
        "n_train": n_train,
        "n_validation": n_validation,
        "n_test": n_test,
        "reinforce": config.to_json(),
    }
    claim_settings(root / RUN_FILE, settings, what="SVF run")
    result = train_reinforce(
        task,
        train,
        validation,
        out_dir=root / REINFORCE_DIR,
        model_path=model_path,
        config=config,
        progress=progress,
    )
    greedy = LocalChatModel(
        model_path=model_path,
        dtype=config.dtype,
        temperature=0.0,
        max_new_tokens=config.max_new_tokens,
    )
    evaluations = Evaluations(root / EVALUATIONS)
    base = evaluations.flags("base", greedy, task, test, concurrency=concurrency)
    tuned = evaluations.flags(
        "expert",
        lambda: greedy.with_adapter(result.expert_path),
        task,
        test,
        concurrency=concurrency,
    )
    summary = {
        **settings,
        "base": _accuracy(base).as_dict(),
        "expert": _accuracy(tuned).as_dict(),
        "difference": paired_difference(tuned, base),
        "expert_path": str(result.expert_path),
        "best_step": result.best_step,
        "validation_accuracy": result.validation_accuracy,
        "seconds_per_step": result.seconds_per_step,
        "stopped_early": result.stopped_early,
        "curve": result.curve,
    }
    write_json(root / RESULT_FILE, summary)
    return summary


def _accuracy(flags: Sequence[bool | None]) -> Accuracy:
    return accuracy(flags, undecided=sum(1 for f in flags if f is None))
