"""Every method of the paper's Table 1 on one harness: same model, task, splits and seeds.

    <run_dir>/majority-vote/     the base model sampled agents × rounds times, majority vote
    <run_dir>/multiagent/        the paper's method (iteration 0 is the untuned debate, whose
                                 round-1 answers are the single-agent baseline)
    <run_dir>/single/            STaR, iterated: single-agent fine-tuning
    <run_dir>/majority/          majority FT
    <run_dir>/no-summarizer/     ablation: multiagent FT, agents read each other's answers
    <run_dir>/no-critics/        ablation: multiagent FT, only generators tuned (they critique)

Runs that start from the same debates share them: the untuned society's test and train
debates are computed once (by ``multiagent``) and their checkpoint files copied to the
methods that would otherwise repeat exactly the same calls (same models, seeds, problems).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mafl_graph.evaluate import evaluate_society
from mafl_graph.loop import MultiagentFinetuning, TunerFactory
from mafl_graph.rundir import prepare_run_dir, write_json
from mafl_graph.society import Society
from mafl_graph.tasks.base import Task
from mafl_graph.usage import UsageRecorder

METHOD_RUNS: dict[str, dict[str, Any]] = {
    "multiagent": {"method": "multiagent"},
    "single": {"method": "single"},
    "majority": {"method": "majority"},
    "no-critics": {"method": "multiagent", "tune_critics": False},
    # Table 1 compares the tuned societies; the untuned debate without a summarizer would be one
    # more full evaluation, so it is skipped (run `mafl loop --no-summarize` for it).
    "no-summarizer": {"method": "multiagent", "summarize": False, "evaluate_base": False},
}
# Which shared debates each run may copy from multiagent/ (identical calls, by construction).
_SHARED = {
    "single": ("iter0/eval.sqlite",),
    "majority": ("iter0/eval.sqlite", "iter1/train.sqlite"),
    "no-critics": ("iter0/eval.sqlite", "iter1/train.sqlite"),
}
BASELINES: tuple[str, ...] = (
    "multiagent",
    "single",
    "majority-vote",
    "majority",
    "no-critics",
    "no-summarizer",
)

log = logging.getLogger(__name__)


def compare_methods(
    society: Society,
    task: Task,
    tuner: TunerFactory,
    run_dir: str | Path,
    *,
    methods: Sequence[str] = BASELINES,
    iterations: int = 2,
    ablation_iterations: int = 1,
    n_train: int = 100,
    n_test: int = 100,
    rounds: int = 2,
    summarize: bool = True,
    w: float = 0.67,
    seed: int = 0,
    concurrency: int = 16,
    diversity: Callable[..., dict[str, Any]] | None = None,
    settings: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """Run (or resume) each method under ``run_dir``; returns each one's metrics.

    ``iterations``: for multiagent and single-agent FT (the curves of the paper's Fig. 1);
    majority FT and the ablations run ``ablation_iterations``. ``diversity`` is measured
    after each evaluation of multiagent and single-agent FT.
    """
    if unknown := [m for m in methods if m not in BASELINES]:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(BASELINES)}.")
    run_dir = Path(run_dir)
    results: dict[str, list[dict[str, Any]]] = {}
    common = {"n_test": n_test, "seed": seed, **dict(settings or {})}
    # The main comparison first, then the cheapest: a run stopped early has what matters most.
    for name in sorted(methods, key=BASELINES.index):
        if name == "majority-vote":
            results[name] = [
                _majority_vote(
                    society,
                    task,
                    run_dir / name,
                    rounds,
                    n_test,
                    seed,
                    concurrency,
                    common,
                    progress,
                )
            ]
            continue
        options = METHOD_RUNS[name]
        long_run = name in ("multiagent", "single")
        loop = MultiagentFinetuning(
            society,
            task,
            tuner,
            iterations=iterations if long_run else ablation_iterations,
            n_train=n_train,
            n_test=n_test,
            rounds=rounds,
            summarize=options.get("summarize", summarize),
            method=options["method"],
            tune_critics=options.get("tune_critics", True),
            evaluate_base=options.get("evaluate_base", True),
            w=w,
            seed=seed,
            concurrency=concurrency,
            # Diversity is a per-iteration curve (paper Fig. 4): measured where there is one.
            diversity=diversity if long_run else None,
            settings=settings,
            progress=progress,
        )
        if summarize:  # the shared debates had a summarizer; without one they differ
            _copy_shared(run_dir / "multiagent", run_dir / name, _SHARED.get(name, ()))
        log.info("method %s", name)
        results[name] = loop.run(run_dir / name)
    return results


def _majority_vote(
    society: Society,
    task: Task,
    run_dir: Path,
    rounds: int,
    n_test: int,
    seed: int,
    concurrency: int,
    settings: Mapping[str, Any],
    progress: bool,
) -> dict[str, Any]:
    """The base model sampled as many times as the debate has answers, then a majority vote."""
    samples = len(society) * rounds
    voters = Society.from_model(society.agents[0].generator, samples)
    prepare_run_dir(run_dir, {**settings, "method": "majority-vote", "samples": samples})
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text())[0]  # type: ignore[no-any-return]
    usage = UsageRecorder(run_dir / "usage.json")
    try:
        evaluation = evaluate_society(
            voters,
            task,
            task.load("test", n_test),
            db_path=run_dir / "eval.sqlite",
            rounds=1,
            seed=seed,
            concurrency=max(1, concurrency * len(society) // samples),
            metadata={"iteration": 0, "split": "test"},
            callbacks=[usage],
            progress=progress,
        )
    finally:
        usage.save()
    record = {"iteration": 0, "eval": evaluation.as_dict()}
    write_json(metrics, [record])
    return record


def _copy_shared(source: Path, target: Path, files: Sequence[str]) -> None:
    """Copy finished shared debates; a target that has its own file keeps it."""
    for name in files:
        origin, copy = source / name, target / name
        # A -wal beside it means its writer is still open (or was killed): not a finished copy.
        wal = origin.with_name(origin.name + "-wal")
        if origin.is_file() and not wal.exists() and not copy.exists():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, copy)
