"""``mafl loop``, ``compare``, ``sweep`` and ``demo``: the paper's loop and its baselines."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Any

import typer

from mafl_graph.cli.app import app, console, show_progress_logs, with_options
from mafl_graph.config import LoopConfig

Opt = typer.Option

WIDE_HELP = "print every column of the table (diversity, tokens, times); report.md has them all"

# The demo's size and difficulty: see docs/loop.md "Choosing a difficulty" for what the
# embedded model scores.
DEMO = LoopConfig.of(high=20, iterations=1, n_train=24, n_test=12, max_tokens=48, concurrency=24)


def run_loop(config: LoopConfig, run_dir: Path, *, wide: bool = False) -> list[dict[str, Any]]:
    """Run (or resume) the loop ``config`` makes into ``run_dir``; print its table (compact,
    80 columns, unless ``wide``)."""
    from mafl_graph.diversity import measure
    from mafl_graph.report import iteration_table, method_of
    from mafl_graph.rundir import RunLayout
    from mafl_graph.usage import UsageRecorder

    loop = config.loop(diversity=measure)
    show_progress_logs()
    metrics = loop.run(run_dir)
    title = f"{config.method} · {run_dir}"
    console.print(iteration_table(metrics, title, method=method_of(run_dir), wide=wide))
    console.print(f"usage: {UsageRecorder(RunLayout(run_dir).usage).describe()}")
    return metrics


@app.command("loop")
@with_options(config=LoopConfig)
def loop_command(
    config: LoopConfig,
    run_dir: Annotated[Path, Opt(help="where everything of the run goes")] = Path("runs/loop"),
    wide: Annotated[bool, Opt(help=WIDE_HELP)] = False,
) -> None:
    """Iterate debate(train) -> datasets -> tune -> debate(test); resumable; prints a table.

    Tokens and cost per agent and role go to <run-dir>/usage.json. With --serving vllm (or
    sglang) --serving-url URL, one server holds every agent's adapter (docs/serving.md).
    """
    run_loop(config, run_dir, wide=wide)


@app.command()
def demo(
    run_dir: Annotated[Path, Opt(help="where the demo's run goes")] = Path("runs/demo"),
    wide: Annotated[bool, Opt(help=WIDE_HELP)] = False,
) -> None:
    """The whole loop on the embedded SmolLM2-135M, offline: debate, tune each agent, evaluate.

    One iteration on a small problem set (about 4 minutes on 2 CPU cores); prints the table.
    ``mafl compare`` runs every baseline at full size.
    """
    run_loop(DEMO, run_dir, wide=wide)


def _default_methods() -> str:
    from mafl_graph.methods import method_names

    return ",".join(method_names())


@app.command("compare")
@with_options(config=LoopConfig, exclude=("method", "critics", "debate_server"))
def compare_command(
    config: LoopConfig,
    run_dir: Annotated[Path, Opt(help="one subdirectory per method goes here")] = Path(
        "runs/compare"
    ),
    methods: Annotated[
        str | None, Opt(help="comma-separated subset of the methods (default: all)")
    ] = None,
    ablation_iterations: Annotated[int, Opt(help="iterations of majority FT, ablations")] = 1,
    diversity: Annotated[bool, Opt(help="measure diversity after each evaluation")] = True,
    wide: Annotated[bool, Opt(help=WIDE_HELP)] = False,
) -> None:
    """Every baseline of the paper's Table 1 on one harness, then the report (table + plots).

    --iterations applies to multiagent and single-agent FT. Each method's directory gets its
    own usage.json (tokens and cost per agent and role).
    """
    from mafl_graph.compare import compare_methods
    from mafl_graph.diversity import measure
    from mafl_graph.methods import method_names
    from mafl_graph.report import console_table, load_metrics, write_report

    society, task, tuner, settings = config.build()
    chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods else method_names()
    loop_options = config.loop_options()
    for own in ("method", "tune_critics", "iterations"):
        loop_options.pop(own)
    show_progress_logs()
    compare_methods(
        society,
        task,
        tuner,
        run_dir,
        methods=chosen,
        iterations=config.iterations,
        ablation_iterations=ablation_iterations,
        diversity=measure if diversity else None,
        settings=settings,
        **loop_options,
    )
    report = write_report(run_dir)
    console.print(console_table(load_metrics(run_dir), wide=wide, title=str(run_dir)))
    console.print(f"Wrote {report}.")


_SWEPT = {"agents": int, "rounds": int, "n_train": int, "w": float}
_SWEPT |= {"learning_rate": float, "epochs": float}


@app.command("sweep")
@with_options(config=LoopConfig, defaults={"iterations": 1})
def sweep_command(
    config: LoopConfig,
    run_dir: Annotated[Path, Opt(help="one loop per setting goes under here")] = Path("runs/sweep"),
    grid: Annotated[
        list[str],
        Opt(help=f"NAME=V1,V2 ({', '.join(_SWEPT)}); repeatable"),
    ] = ["w=0.5,0.67,0.9"],  # noqa: B006 - typer reads list defaults, never mutated
    wide: Annotated[bool, Opt(help=WIDE_HELP)] = False,
) -> None:
    """Run the loop for every combination of a grid of settings; write one table.

    Every other option is the loop's, for every grid point (the swept ones excepted).
    """
    from mafl_graph.report import console_table, markdown_table, rows
    from mafl_graph.rundir import RunLayout

    axes: dict[str, list[Any]] = {}
    for item in grid:
        name, _, values = item.partition("=")
        if name not in _SWEPT or not values:
            raise ValueError(f"--grid {item!r}: expected NAME=V1,V2 with NAME in {list(_SWEPT)}.")
        axes[name] = [_SWEPT[name](v) for v in values.split(",")]
    table: dict[str, list[dict[str, Any]]] = {}
    for combination in itertools.product(*axes.values()):
        point = dict(zip(axes, combination, strict=True))
        label = ",".join(f"{k}={v}" for k, v in point.items())
        point_dir = RunLayout(run_dir).method(label).root
        table[label] = run_loop(config.replace(**point), point_dir, wide=wide)
    out = RunLayout(run_dir).sweep_table
    out.write_text(markdown_table(rows(table)))
    console.print(console_table(table, wide=wide, title=f"sweep · {run_dir}"))
    console.print(f"Wrote {out}.")
