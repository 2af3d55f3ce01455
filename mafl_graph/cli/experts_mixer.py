"""``mafl experts mixer``: train the token-level mixer's probes for a method's experts.

    mafl experts mixer --run-dir runs/experts --method kmeans

Writes ``experts/<method>/mixer.safetensors`` (the probes, for
:class:`~mafl_graph.experts.mixer.MixtureChatModel`) and ``mixer.json`` (accuracy and AUC per
probe on held-out documents of the corpus and on the run's test documents) in the run
directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mafl_graph.cli.app import console
from mafl_graph.cli.experts import DEFAULT_RUN, RUN_DIR_HELP, experts_app

Opt = typer.Option


@experts_app.command("mixer")
def mixer_command(
    run_dir: Annotated[Path, Opt(help=RUN_DIR_HELP)] = DEFAULT_RUN,
    method: Annotated[str, Opt(help="the clustering whose experts and piles to use")] = "kmeans",
    held_out: Annotated[float, Opt(help="share of each pile's documents kept for the report")] = (
        0.2
    ),
    max_tokens: Annotated[int, Opt(help="tokens of each document the probes learn from")] = 64,
    max_documents: Annotated[
        int | None, Opt(help="documents per pile at most (default: all)")
    ] = None,
    regularization: Annotated[float, Opt(help="L2 strength of the logistic probes")] = 1.0,
    seed: Annotated[int, Opt(help="seed of the held-out split")] = 0,
) -> None:
    """Train one probe per expert (on its last hidden state) from the method's piles and report
    their accuracy and AUC on held-out and test documents; the probes are what
    `MixtureChatModel(mixer=...)` loads."""
    from mafl_graph.experts.clustering import METHODS
    from mafl_graph.experts.mixer import train_run_mixer

    if method not in METHODS:
        raise ValueError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
    path, report, test = train_run_mixer(
        run_dir,
        method,
        held_out=held_out,
        seed=seed,
        max_tokens_per_doc=max_tokens,
        max_documents_per_pile=max_documents,
        regularization=regularization,
    )
    console.print("On held-out documents of the corpus (the experts were tuned on them):")
    console.print(report.table(), markup=False, soft_wrap=True)
    if test is not None:
        console.print("On the run's test documents (each domain given its pile):")
        console.print(test.table(), markup=False, soft_wrap=True)
    console.print(
        f"Probes in {path} (trained in {report.seconds:.0f} s), reports in "
        f"{path.with_name('mixer.json')}."
    )
