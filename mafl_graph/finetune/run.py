"""``mafl datasets`` as a function: a debate run's per-agent datasets, validated and exported."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mafl_graph.finetune.datasets import TARGETS, Target, build_datasets, check_w
from mafl_graph.finetune.export import FORMATS, ExportResult, export_datasets
from mafl_graph.rundir import RunLayout, read_settings, write_json
from mafl_graph.tasks import get_task
from mafl_graph.traces import UnfinishedThread, read_traces_sqlite


def export_run_datasets(
    run_dir: str | Path,
    *,
    w: float,
    target: str = "consensus",
    fmt: str = "all",
    seed: int = 0,
    min_examples: int | None = None,
) -> tuple[dict[str, Any], ExportResult, list[UnfinishedThread]]:
    """Build every agent's datasets from a ``mafl debate`` run and export them in ``fmt``.

    Writes ``<run_dir>/datasets/`` and its ``stats.json`` (the returned report, which also
    counts the examples the other target would give). Everything is checked before anything
    is written.
    """
    layout = RunLayout(run_dir)
    check_w(w)
    if target not in TARGETS:
        raise ValueError(f"--target must be one of {', '.join(TARGETS)}; got {target!r}.")
    if fmt != "all" and fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)} or all; got {fmt!r}.")
    formats = list(FORMATS) if fmt == "all" else [fmt]
    if not layout.manifest.is_file():
        raise FileNotFoundError(f"{layout.manifest} not found; is {run_dir} a `mafl debate` run?")
    settings = read_settings(layout.manifest)
    task = get_task(settings["task"], **settings.get("task_options", {}))
    traces = read_traces_sqlite(layout.debates, "debate")
    if not traces.traces:
        raise ValueError(f"{run_dir} holds no finished debate; run `mafl debate` first.")
    agents = settings.get("agents")
    chosen: Target = "reference" if target == "reference" else "consensus"
    other: Target = "consensus" if chosen == "reference" else "reference"
    built = build_datasets(traces, task, w=w, target=chosen, seed=seed, n_agents=agents)
    built_by_name = {d.name: d for d in built.values()}
    variant = {}
    if other == "consensus" or any(t.reference is not None for t in traces):
        variant = build_datasets(traces, task, w=w, target=other, seed=seed, n_agents=agents)
    out = layout.datasets_dir()
    # A set with no example is skipped, not a failure: that agent keeps its model (as in the
    # loop); exit 1 stays for files a provider would reject.
    result = export_datasets(
        built.values(), out, formats=formats, min_examples=min_examples, skip_empty=True
    )
    skipped = {name: built_by_name[name].stats.why_empty(target, w) for name in result.skipped}
    report = {
        "run_dir": str(run_dir),
        "out": str(out),
        "task": settings["task"],
        "w": w,
        "target": target,
        "seed": seed,
        "formats": formats,
        "debates": len(traces),
        "unfinished": [dataclasses.asdict(u) for u in traces.unfinished],
        "datasets": {d.name: d.stats.as_dict() for d in built.values()},
        f"examples_with_target_{other}": {d.name: d.stats.examples for d in variant.values()},
        "skipped": skipped,
        "valid": result.ok,
        "issues": {str(p): [str(i) for i in issues] for p, issues in result.failed.items()},
    }
    write_json(layout.dataset_stats(), report)
    return report, result, list(traces.unfinished)
