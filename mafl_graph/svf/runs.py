"""Runs of SVF experts in a run directory: train one with REINFORCE on a task's grader (or
the classification expert of self-adaptation) and measure it against the base on held-out
problems (:func:`train_expert`, :func:`train_classifier`); compare the self-adaptation
strategies on a mixed corpus (:func:`adapt_run`).

A run directory holds ``svf_run.json`` (the task, model, split sizes and REINFORCE settings; a
resumed run must have the same), ``reinforce/`` (:func:`~mafl_graph.svf.train_reinforce`'s
directory, the expert in ``reinforce/best``), ``evaluations/<label>.json`` (each test problem's
grade per model, written after every chunk, so an interrupted evaluation resumes where it
stopped) and ``svf_train.json``, the result that ``mafl report`` renders.

The held-out evaluation goes through the engine (:class:`~mafl_graph.local.LocalChatModel`,
greedy), as the society's agents do; the validation that picks the best step runs inside the
training loop on problems drawn from the train split, never on the test problems.

A self-adaptation run holds ``svf_adapt_run.json`` (its settings), ``evaluations/`` (the base,
each expert and each strategy, per problem), ``routes/<strategy>.json`` (each dispatch reply
and choice), ``cem/`` (the few-shot search) and ``svf_adapt.json``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
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
    from mafl_graph.svf.config import CEMConfig, ReinforceConfig

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
    from mafl_graph.svf.config import ReinforceConfig

    config = config or ReinforceConfig()
    task, task_settings = _build(task_options, config.seed)
    return train_on(
        task,
        {"task_options": task_settings},
        run_dir,
        config,
        model=model,
        n_train=n_train,
        n_validation=n_validation,
        n_test=n_test,
        concurrency=concurrency,
        progress=progress,
    )


def train_classifier(
    task_options: TaskOptions,
    labels: Sequence[str],
    run_dir: str | Path,
    config: ReinforceConfig | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Train the classification expert of :class:`~mafl_graph.svf.adapt.ClassifierDispatch`:
    REINFORCE on naming each question's domain among ``labels`` (or ``other``), on a mixed
    corpus (``task_options``: task ``mixed``); like :func:`train_expert` otherwise."""
    from mafl_graph.svf.adapt import DomainClassification
    from mafl_graph.svf.config import ReinforceConfig

    config = config or ReinforceConfig(max_new_tokens=12)
    source, task_settings = _build(task_options, config.seed)
    check_labels(source, labels)
    task = DomainClassification(source, tuple(labels))
    settings = {"task_options": task_settings, "source": source.name, "labels": list(labels)}
    return train_on(task, settings, run_dir, config, **kwargs)


def train_on(
    task: Task,
    task_settings: dict[str, Any],
    run_dir: str | Path,
    config: ReinforceConfig,
    *,
    model: str = "smollm2",
    n_train: int = 200,
    n_validation: int = 50,
    n_test: int = 100,
    concurrency: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """:func:`train_expert` on a task object; ``task_settings`` say how it was made."""
    from mafl_graph.local import LocalChatModel
    from mafl_graph.svf.reinforce import claim_settings, train_reinforce

    model_path = local_model_path(model)
    train, validation, test = splits(
        task, n_train=n_train, n_validation=n_validation, n_test=n_test
    )
    root = Path(run_dir).expanduser()
    settings = {
        "kind": "svf-train",
        "task": task.name,
        **task_settings,
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
    # The base on the validation problems: where the learning curve starts.
    base_validation = evaluations.flags(
        "base-validation", greedy, task, validation, concurrency=concurrency
    )
    tuned = evaluations.flags(
        "expert",
        lambda: greedy.with_adapter(result.expert_path),
        task,
        test,
        concurrency=concurrency,
    )
    summary = {
        **settings,
        "base": accuracy_of(base).as_dict(),
        "base_validation": accuracy_of(base_validation).as_dict(),
        "expert": accuracy_of(tuned).as_dict(),
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


def _build(task_options: TaskOptions, seed: int) -> tuple[Task, dict[str, Any]]:
    from mafl_graph.config import LOOP_TASK_DEFAULTS

    return task_options.build(seed=seed, defaults=LOOP_TASK_DEFAULTS.get(task_options.task))


def check_labels(task: Any, labels: Sequence[str]) -> None:
    """Refuse expert labels that are not domains of ``task`` (a mixed corpus), naming them."""
    domains = getattr(task, "domains", None)
    if domains is None:
        raise ValueError(
            f"Task {task.name!r} has no domains to route between: self-adaptation needs a "
            "mixed corpus (--task mixed --tasks ...) whose domains the experts are named after"
        )
    unknown = [label for label in labels if label not in domains]
    if unknown:
        raise ValueError(
            f"Unknown domain label(s) {', '.join(map(repr, unknown))}: the corpus's domains "
            f"are {', '.join(domains)}; name each expert after one of them (label=directory)"
        )


def accuracy_of(flags: Sequence[bool | None]) -> Accuracy:
    """Right answers over ``flags`` (None: undecided, counted apart)."""
    return accuracy(flags, undecided=sum(1 for f in flags if f is None))


ADAPT_RUN_FILE = "svf_adapt_run.json"
ADAPT_RESULT_FILE = "svf_adapt.json"
STRATEGIES = ("prompt", "classifier", "cem")


def adapt_run(
    task_options: TaskOptions,
    experts: Mapping[str, str | Path],
    run_dir: str | Path,
    *,
    strategies: Sequence[str] = ("prompt", "cem"),
    classifier: str | Path | None = None,
    cem: CEMConfig | None = None,
    model: str = "smollm2",
    n_test: int = 100,
    max_new_tokens: int = 256,
    seed: int = 0,
    concurrency: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """The self-adaptation strategies on a mixed corpus's test problems, against the base and
    each single expert, all greedy and graded per problem (resumable in ``run_dir``).

    ``experts`` maps domain names of the corpus to expert directories. ``prompt`` dispatches
    with the base, ``classifier`` with the ``classifier`` expert (:func:`train_classifier`),
    ``cem`` answers every problem with the mixture the cross-entropy method finds on
    ``cem.examples`` problems of the corpus's train split (cached in ``run_dir/cem``).
    """
    from mafl_graph.local import LocalChatModel
    from mafl_graph.svf.adapt import (
        ClassifierDispatch,
        ExpertLibrary,
        PromptDispatch,
        routing_accuracy,
    )
    from mafl_graph.svf.cem import few_shot_cem
    from mafl_graph.svf.config import CEMConfig
    from mafl_graph.svf.reinforce import claim_settings

    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"Unknown strategy {unknown[0]!r}; choose among {', '.join(STRATEGIES)}")
    if "classifier" in strategies and classifier is None:
        raise ValueError(
            "The classifier strategy needs --classifier, an expert from `mafl svf classifier`"
        )
    model_path = local_model_path(model)
    library = ExpertLibrary(experts)
    task, task_settings = _build(task_options, seed)
    check_labels(task, library.labels)
    cem = cem or CEMConfig(max_new_tokens=max_new_tokens, seed=seed)
    root = Path(run_dir).expanduser()
    settings = {
        "kind": "svf-adapt",
        "task": task.name,
        "task_options": task_settings,
        "experts": library.paths,
        "strategies": list(strategies),
        "classifier": None if classifier is None else str(classifier),
        "cem": dataclasses.asdict(cem),
        "model": model_path,
        "n_test": n_test,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
    }
    claim_settings(root / ADAPT_RUN_FILE, settings, what="self-adaptation run")
    test = task.load("test", n_test)
    domains = [task.domain_of(p) for p in test]  # type: ignore[attr-defined]
    greedy = LocalChatModel(model_path=model_path, temperature=0.0, max_new_tokens=max_new_tokens)
    evaluations = Evaluations(root / EVALUATIONS)
    flags = {"base": evaluations.flags("base", greedy, task, test, concurrency=concurrency)}
    for label, path in library.paths.items():
        flags[label] = evaluations.flags(
            f"expert-{label}",
            lambda path=path: greedy.with_adapter(path),  # type: ignore[misc]
            task,
            test,
            concurrency=concurrency,
        )
    routes: dict[str, list[str]] = {}
    for strategy in strategies:
        if strategy == "cem":
            found = few_shot_cem(
                library.paths,
                task,
                task.load("train", cem.examples),
                out_dir=root / "cem",
                model_path=model_path,
                config=cem,
                progress=progress,
            )
            choice = {p.id: "cem" for p in test}
            adapters: dict[str, str | None] = {"cem": str(found.expert_path)}
        else:
            dispatch = (
                PromptDispatch(library, model_path=model_path)
                if strategy == "prompt"
                else ClassifierDispatch(library, classifier, model_path=model_path)  # type: ignore[arg-type]
            )
            choice = _routes(root / "routes" / f"{strategy}.json", dispatch, test, concurrency)
            adapters = {label: library.adapter(label) for label in set(choice.values())}
            routes[strategy] = [choice[p.id] for p in test]
        for label, adapter in adapters.items():
            group = [p for p in test if choice[p.id] == label]
            evaluations.flags(
                f"adapt-{strategy}",
                greedy if adapter is None else greedy.with_adapter(adapter),
                task,
                group,
                concurrency=concurrency,
            )
        # Every problem is graded by now, each with its chosen expert: this only reads them.
        flags[f"adapt-{strategy}"] = evaluations.flags(f"adapt-{strategy}", greedy, task, test)
    best = max(library.labels, key=lambda label: sum(map(bool, flags[label])))
    rows = {}
    for name, found_flags in flags.items():
        row: dict[str, Any] = {
            "accuracy": accuracy_of(found_flags).as_dict(),
            "by_domain": {
                d: accuracy_of(
                    [f for f, dd in zip(found_flags, domains, strict=True) if dd == d]
                ).as_dict()
                for d in sorted(set(domains))
            },
            "vs_base": paired_difference(found_flags, flags["base"]),
            "vs_best_expert": paired_difference(found_flags, flags[best]),
        }
        strategy = name.removeprefix("adapt-")
        if strategy in routes:
            row["routing_accuracy"] = routing_accuracy(routes[strategy], domains, library.labels)
            row["routes"] = {r: routes[strategy].count(r) for r in sorted(set(routes[strategy]))}
        rows[name] = row
    summary = {**settings, "best_expert": best, "domains": domains, "rows": rows}
    write_json(root / ADAPT_RESULT_FILE, summary)
    return summary


def _routes(
    path: Path, dispatch: Any, problems: Sequence[Problem], concurrency: int
) -> dict[str, str]:
    """Each problem's chosen label, asked once and kept in ``path`` with the reply."""
    import json

    done: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else {}
    todo = [p for p in problems if p.id not in done]
    for start in range(0, len(todo), CHUNK):
        chunk = todo[start : start + CHUNK]
        choices = dispatch.choose_many([p.question for p in chunk], concurrency=concurrency)
        done.update({p.id: c.as_dict() for p, c in zip(chunk, choices, strict=True)})
        write_json(path, done)
    return {p.id: done[p.id]["expert"] for p in problems}
