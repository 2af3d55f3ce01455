"""``mafl eval`` (zero-shot transfer of a tuned society) and ``mafl report``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mafl_graph.cli.app import app, console, with_options
from mafl_graph.config import ClientOptions, TaskOptions

Opt = typer.Option

WIDE_HELP = "print every column of the table (diversity, tokens, times); report.md has them all"


@app.command("report")
def report_command(
    run_dir: Annotated[
        Path, Opt(help="a `mafl compare`, `mafl loop` or `mafl svf ...` directory")
    ] = Path("runs/compare"),
    wide: Annotated[bool, Opt(help=WIDE_HELP)] = False,
) -> None:
    """Write report.md and its figures; print its table (compact, 80 columns, unless --wide).

    A loop or comparison gets the paper's Table 1 with every column, accuracy.png and
    diversity.png; an SVF run its accuracies and learning curve.
    """
    from mafl_graph.report import report_run

    path, table = report_run(run_dir, wide=wide)
    console.print(table)
    console.print(f"Wrote {path}.")


@app.command("eval")
@with_options(test=TaskOptions, client=ClientOptions, exclude=("task",))
def eval_command(
    test: TaskOptions,
    client: ClientOptions,
    run_dir: Annotated[Path, Opt(help="a `mafl loop` run whose tuned society is evaluated")] = (
        Path("runs/loop")
    ),
    train_task: Annotated[str, Opt(help="the task the society was tuned on (checked)")] = (
        "arithmetic"
    ),
    test_task: Annotated[str, Opt(help="the task to evaluate on")] = "gsm8k",
    n: Annotated[int, Opt(help="test problems")] = 100,
    concurrency: Annotated[int, Opt(help="problems debated at once")] = 16,
    wide: Annotated[bool, Opt(help=WIDE_HELP)] = False,
) -> None:
    """Zero-shot transfer (paper Fig. 5): the base and the tuned society on another task.

    The task options (--high, --data-dir, ...) apply to --test-task.
    """
    import dataclasses

    from mafl_graph.evaluate import evaluate_transfer
    from mafl_graph.report import console_table, markdown_table, rows

    records, out = evaluate_transfer(
        run_dir,
        dataclasses.replace(test, task=test_task),
        train_task=train_task,
        n=n,
        concurrency=concurrency,
        client=client,
    )
    metrics = {f"tuned on {train_task}, tested on {out.root.name}": records}
    out.report.write_text(markdown_table(rows(metrics)))
    console.print(console_table(metrics, wide=wide))
    console.print(f"Wrote {out.report}.")
