"""``mafl datasets``: every agent's generator and critic datasets from a run's debates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mafl_graph.cli.app import app, console, error
from mafl_graph.cli.render import dataset_table, unfinished_line
from mafl_graph.config import DEFAULT_W

Opt = typer.Option


@app.command("datasets")
def datasets_command(
    run_dir: Annotated[Path, Opt(help="a run directory written by `mafl debate`")] = Path(
        "runs/debate"
    ),
    w: Annotated[float, Opt(help="share of D_C- (first answer wrong) in each critic's set")] = (
        DEFAULT_W
    ),
    target: Annotated[str, Opt(help="consensus (the paper) or reference (ground truth)")] = (
        "consensus"
    ),
    fmt: Annotated[str, Opt("--format", help="openai, vertex, hf or all")] = "all",
    seed: Annotated[int, Opt(help="seed for the critic mix and the example order")] = 0,
    min_examples: Annotated[
        int | None, Opt(help="examples a file needs (default: each provider's minimum)")
    ] = None,
) -> None:
    """Build every agent's generator and critic datasets from a run's debates, validate, export.

    Writes <run-dir>/datasets/<agent>-<role>.{openai.jsonl,vertex.jsonl,hf-messages,
    hf-prompt-completion} and stats.json; exits 1 listing every bad line if a file would be
    rejected by its provider.
    """
    from mafl_graph.finetune.run import export_run_datasets

    report, result, unfinished = export_run_datasets(
        run_dir, w=w, target=target, fmt=fmt, seed=seed, min_examples=min_examples
    )
    if line := unfinished_line(unfinished):
        console.print(line)
    other = "consensus" if target == "reference" else "reference"
    console.print(dataset_table(report, target, other))
    if undecided := sum(s.get("undecided", 0) for s in report["datasets"].values()):
        console.print(
            f"[yellow]{undecided} answer(s) left out of the datasets:[/yellow] grading them "
            "against the target ran out of time (undecided, not wrong)."
        )
    for name, reason in report["skipped"].items():
        console.print(f"[yellow]skipped {name}:[/yellow] no example ({escape(reason)})")
    if not result.ok:
        for path, issues in result.failed.items():
            console.print(f"[red]{escape(str(path))}[/red]: {len(issues)} problem(s)")
            for issue in issues:
                console.print(f"  {escape(str(issue))}")
        error("Validation failed: fix the data (or the limits) and run again.")
        raise typer.Exit(1)
    console.print(f"Wrote {len(result.written)} datasets to {report['out']}.")
