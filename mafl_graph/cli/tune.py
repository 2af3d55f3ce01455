"""``mafl tune``: tune every agent's generator and critic on its dataset."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from mafl_graph.cli.app import app, console, error, with_options
from mafl_graph.cli.render import tune_table
from mafl_graph.finetune.tuners.options import TuneOptions

Opt = typer.Option


@app.command("tune")
@with_options(options=TuneOptions, exclude=("tuner",))
def tune_command(
    options: TuneOptions,
    run_dir: Annotated[Path, Opt(help="a run directory with datasets from `mafl datasets`")] = Path(
        "runs/debate"
    ),
    backend: Annotated[str, Opt(help="the tuning backend: local, openai, vertex, ...")] = "local",
    iteration: Annotated[int, Opt(help="fine-tuning iteration (k > 1 continues from k-1)")] = 1,
    model: Annotated[
        str | None, Opt(help="the model to tune (default: the backend's, e.g. smollm2)")
    ] = None,
    previous: Annotated[
        Path | None, Opt(help="tuned.json to continue from (default: iteration k-1's)")
    ] = None,
    retry: Annotated[bool, Opt(help="start new jobs where the ledger records a failure")] = False,
    seed: Annotated[int, Opt(help="seed for the order of examples and the job")] = 0,
) -> None:
    """Tune every agent's generator and critic on its dataset; write tuned.json.

    Hosted jobs are recorded in <run-dir>/tuning/iter<k>/ before any waiting, so running the
    same command again after an interruption polls the same jobs instead of paying twice.
    """
    from mafl_graph.finetune.tuners import load_tuned, tune_run
    from mafl_graph.finetune.tuners.registry import tuner_class
    from mafl_graph.rundir import RunLayout, write_json

    layout = RunLayout(run_dir)
    cls = tuner_class(backend)
    if iteration < 1:
        raise ValueError(f"--iteration starts at 1; got {iteration}.")
    if previous is None and iteration > 1 and layout.tuned_at(iteration - 1).is_file():
        previous = layout.tuned_at(iteration - 1)
    earlier = load_tuned(previous) if previous else {}
    tuner = cls.from_options(
        run_dir,
        options,
        model=model or cls.default_base,
        iteration=iteration,
        retry=retry,
        seed=seed,
    )
    write_json(
        layout.tune_config(iteration, backend), dataclasses.asdict(tuner.config), default=str
    )
    outcomes = tune_run(
        tuner,
        run_dir,
        base=options.base,
        previous=earlier,
        on_outcome=lambda o: console.print(
            f"{'[green]done[/green]' if o.tuned else '[red]failed[/red]'} agent{o.agent}-{o.role}"
        ),
    )
    title = f"{run_dir} · {backend} · iteration {iteration}"
    console.print(tune_table(outcomes, title, cls))
    if any(o.tuned is None for o in outcomes):
        error("Some tuning failed; fix the cause and run again (--retry for failed jobs).")
        raise typer.Exit(1)
    console.print(f"Wrote {layout.tuned}.")
