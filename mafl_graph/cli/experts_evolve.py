"""``mafl experts evolve``: EvoPrompt on the role descriptions and global instruction of a
society of trained experts.

    mafl experts evolve --method kmeans --optimizer ga --population 10 --iterations 10 --dev 20

Registered on the ``mafl experts`` group by importing this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mafl_graph.cli.app import console, show_progress_logs, with_options
from mafl_graph.cli.experts import DEFAULT_RUN, RUN_DIR_HELP, experts_app
from mafl_graph.experts.evoprompt import EvoPromptConfig

Opt = typer.Option


@experts_app.command("evolve")
@with_options(config=EvoPromptConfig)
def evolve_command(
    config: EvoPromptConfig,
    run_dir: Annotated[Path, Opt(help=RUN_DIR_HELP)] = DEFAULT_RUN,
    method: Annotated[str, Opt(help="the clustering method whose trained experts debate")] = (
        "kmeans"
    ),
    dev: Annotated[
        int, Opt(help="dev problems: train problems beyond the corpus (never the test split)")
    ] = 20,
    optimizer_model: Annotated[
        str | None,
        Opt(
            help="the LLM that evolves the prompts, e.g. openai:gpt-4o-mini (default: the "
            "society's summarizer)"
        ),
    ] = None,
    chat_temperature: Annotated[float, Opt(help="the experts' and summarizer's temperature")] = (
        0.7
    ),
    chat_max_tokens: Annotated[int, Opt(help="the experts' and summarizer's tokens per reply")] = (
        256
    ),
    out: Annotated[
        Path | None, Opt(help="the EvoPrompt run directory (default: RUN_DIR/evoprompt/...)")
    ] = None,
) -> None:
    """Evolve each expert's role description and the global instruction (EvoPrompt GA or DE).

    Each expert first drafts its own role from problems of its pile; fitness is the debate's
    accuracy on dev problems. Every candidate, score and model call is recorded in the run
    directory, and a rerun resumes without paying for anything twice.
    """
    import logging

    from rich.table import Table

    from mafl_graph.experts.evoprompt import evolve_experts

    show_progress_logs()
    logging.getLogger("mafl_graph.experts.evoprompt").setLevel(logging.INFO)
    result = evolve_experts(
        run_dir,
        method,
        config,
        dev=dev,
        optimizer_model=optimizer_model,
        temperature=chat_temperature,
        max_tokens=chat_max_tokens,
        out_dir=out,
        progress=True,
    )
    table = Table(title=f"EvoPrompt ({config.optimizer}) on {method}'s experts", show_lines=True)
    table.add_column("prompt")
    table.add_column("text")
    table.add_row("instruction", result.instruction or "(none)")
    for index, role in enumerate(result.roles):
        table.add_row(f"role {index}", role or "(none)")
    console.print(table, markup=False)
    usage = result.usage
    console.print(
        f"Dev fitness {result.fitness:.3f} (accuracy {result.accuracy:.1%}, agreement "
        f"{result.agreement:.1%}). Spent {usage.get('optimizer_calls', 0)} optimizer calls and "
        f"{usage.get('debate_calls', 0)} debate calls over {usage.get('prompt_sets', 0)} prompt "
        f"sets; {usage.get('failed_candidates', 0)} of {usage.get('candidates', 0)} candidates "
        f"failed. Wrote {result.run_dir}.",
        markup=False,
    )
