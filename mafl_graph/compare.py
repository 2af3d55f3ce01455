"""Every method of the paper's Table 1 on one harness: same model, task, splits and seeds.

Each registered method (:mod:`mafl_graph.methods`, in :func:`~mafl_graph.methods.method_names`
order) gets its own sub-run of the comparison's directory (``RunLayout.method(name)``): the
loop methods a fine-tuning loop (``multiagent``'s iteration 0 is the untuned debate, whose
round-1 answers are the single-agent baseline), ``majority-vote`` one evaluation.

Runs that start from the same debates share them: the untuned society's test and train
debates are computed once (by ``multiagent``) and their checkpoint files copied to the
methods that would otherwise repeat exactly the same calls (same models, seeds, problems).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mafl_graph.loop import MultiagentFinetuning, TunerFactory
from mafl_graph.methods import Comparison, Method, Records, get_method, method_names
from mafl_graph.rundir import RunLayout
from mafl_graph.society import Society
from mafl_graph.tasks.base import Task

BASELINES: tuple[str, ...] = method_names()
"""The built-in methods in comparison order; :func:`~mafl_graph.methods.method_names` also
lists those registered later."""

log = logging.getLogger(__name__)


def compare_methods(
    society: Society,
    task: Task,
    tuner: TunerFactory,
    run_dir: str | Path,
    *,
    methods: Sequence[str] | None = None,
    iterations: int = 2,
    ablation_iterations: int = 1,
    diversity: Callable[..., dict[str, Any]] | None = None,
    settings: Mapping[str, Any] | None = None,
    progress: bool = True,
    **loop_options: Any,
) -> dict[str, Records]:
    """Run (or resume) each method under ``run_dir``; returns each one's metrics.

    ``methods``: registered names (default: all of them), run in comparison order.
    ``iterations``: for the long-run methods (multiagent and single-agent FT, the curves of
    the paper's Fig. 1); the others run ``ablation_iterations``. ``diversity`` is measured
    after each evaluation of the long runs. ``loop_options``: options of
    :class:`~mafl_graph.loop.MultiagentFinetuning` (``n_train``, ``n_test``, ``rounds``,
    ``summarize``, ``w``, ``seed``, ``concurrency``, …) for every method, with the loop's
    defaults; each method's own options (an ablation's) win over them.
    """
    names = method_names() if methods is None else tuple(dict.fromkeys(methods))
    if unknown := [m for m in names if m not in method_names()]:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(method_names())}.")
    if "method" in loop_options:
        raise TypeError("compare_methods runs each of `methods`; it takes no `method` option.")
    # The comparison's options, checked and completed with the loop's defaults before any run.
    shared = MultiagentFinetuning(
        society, task, tuner, settings=settings, progress=progress, **loop_options
    )
    layout = RunLayout(run_dir)
    results: dict[str, Records] = {}

    def run_loop(method: Method) -> Records:
        loop = MultiagentFinetuning(
            society,
            task,
            tuner,
            **{
                **loop_options,
                "method": method,
                "iterations": iterations if method.long_run else ablation_iterations,
                # Diversity is a per-iteration curve (paper Fig. 4): measured where there is one.
                "diversity": diversity if method.long_run else None,
                "settings": settings,
                "progress": progress,
            },
        )
        run = layout.method(method.name)
        if shared.summarize:  # the shared debates had a summarizer; without one they differ
            _copy_shared(method, layout.method(method.shares_with), run)
        return loop.run(run.root)

    # The main comparison first, then the cheapest: a run stopped early has what matters most.
    order = method_names()
    for name in sorted(names, key=order.index):
        method = get_method(name)
        log.info("method %s", name)
        results[name] = method.run_in_comparison(
            Comparison(
                society=society,
                task=task,
                layout=layout.method(name),
                rounds=shared.rounds,
                n_test=shared.n_test,
                seed=shared.seed,
                concurrency=shared.concurrency,
                settings=dict(settings or {}),
                progress=progress,
                run_loop=run_loop,
            )
        )
    return results


def _copy_shared(method: Method, source: RunLayout, target: RunLayout) -> None:
    """Copy the finished debates ``method`` shares with ``source``; a target's own file stays."""
    if source.root == target.root:
        return
    pairs = zip(method.shared_debates(source), method.shared_debates(target), strict=True)
    for origin, copy in pairs:
        # A -wal beside it means its writer is still open (or was killed): not a finished copy.
        wal = origin.with_name(origin.name + "-wal")
        if origin.is_file() and not wal.exists() and not copy.exists():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, copy)
