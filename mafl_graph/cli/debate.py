"""``mafl debate``: debate a task's problems and print accuracy and consensus."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mafl_graph.cli.app import app, console, error, with_options
from mafl_graph.cli.render import summary_table
from mafl_graph.config import DebateConfig

if TYPE_CHECKING:
    from mafl_graph.debate import DebateResult


@app.command()
@with_options(config=DebateConfig)
def debate(
    config: DebateConfig,
    run_dir: Annotated[Path, typer.Option(help="where checkpoints, manifest and results go")] = (
        Path("runs/debate")
    ),
) -> None:
    """Debate problems of a task and print accuracy (± standard error) and consensus.

    Running it again with the same --run-dir resumes: finished debates are read back, and an
    interrupted one continues from its last saved answer.
    """
    from mafl_graph.debate import CheckpointError
    from mafl_graph.rundir import RunLayout
    from mafl_graph.usage import UsageRecorder

    try:
        evaluation = config.run(run_dir)
    except CheckpointError as exc:  # results of an earlier run stay as they were
        raise ValueError(str(exc)) from exc
    title = f"{config.task_options.task} · {config.model} · {run_dir}"
    console.print(summary_table(evaluation.summary, evaluation.seconds, title))
    usage = RunLayout(run_dir).usage
    console.print(f"usage: {UsageRecorder(usage).describe()} ({usage})")
    report_failures(evaluation.results)


def report_failures(results: Sequence[DebateResult]) -> None:
    """Each distinct reason debates failed, once; exit 1 if every debate failed.

    A run in which nothing succeeded (a wrong key, a model the provider does not serve) is a
    failed command, not a result with a "failed debates" count.
    """
    from mafl_graph.debate.nodes import without_call

    reasons: dict[str, int] = {}
    for result in results:
        if result.error is not None:  # grouped by reason: which call failed is in results.jsonl
            reason = without_call(result.error)
            reasons[reason] = reasons.get(reason, 0) + 1
    for reason, count in reasons.items():
        error(f"{count} debate(s): {reason}", label="failed")
    if results and reasons and all(not r.ok for r in results):
        error("every debate failed; fix the cause above and run again.")
        raise typer.Exit(1)
