"""``mafl svf``: SVF experts (Transformer²): train one with REINFORCE, adapt per problem,
compare with LoRA and full fine-tuning."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from mafl_graph.cli.app import _Commands, app, console, with_options
from mafl_graph.config import TaskOptions
from mafl_graph.svf.config import CEMConfig, ReinforceConfig

Opt = typer.Option

svf_app = _Commands(help="SVF experts: train with REINFORCE, adapt per problem, compare.")
app.add_typer(svf_app, name="svf")

LAYERS_HELP = "layers with z vectors, e.g. '-6:' (the last six) or '0,1,2'; default: all"


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    """``'-6:'`` -> the last six layers' indices from the end; ``'0,3'`` -> (0, 3)."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    try:
        if ":" in text:
            start, _, stop = text.partition(":")
            first = int(start) if start else 0
            if stop:
                return tuple(range(first, int(stop)))
            if first >= 0:
                raise ValueError("an open range needs a negative start, e.g. '-6:'")
            return tuple(range(first, 0))
        return tuple(int(part) for part in text.split(","))
    except ValueError as exc:
        raise ValueError(f"--layers {text!r} is not a layer list or range: {exc}") from None


@svf_app.command("train")
@with_options(task=TaskOptions, config=ReinforceConfig, exclude=("targets", "layers"))
def train_command(
    task: TaskOptions,
    config: ReinforceConfig,
    run_dir: Annotated[Path, Opt(help="where the run goes; run again to resume")] = Path(
        "runs/svf"
    ),
    model: Annotated[str, Opt(help="the local model: smollm2, a GGUF or HF directory")] = (
        "smollm2"
    ),
    layers: Annotated[str | None, Opt(help=LAYERS_HELP)] = None,
    targets: Annotated[str, Opt(help="linear modules with z vectors, comma-separated")] = (
        "gate_proj,up_proj,down_proj"
    ),
    n_train: Annotated[int, Opt(help="training problems (from the train split)")] = 200,
    n_validation: Annotated[
        int, Opt(help="validation problems, from the train split, disjoint from training")
    ] = 50,
    n_test: Annotated[int, Opt(help="held-out test problems the result is measured on")] = 100,
) -> None:
    """Train an SVF expert with REINFORCE on the task's grader; grade it and the base on the
    test split; write svf_train.json (render it with `mafl report`)."""
    from mafl_graph.svf.runs import train_expert

    config = dataclasses.replace(
        config,
        layers=parse_layers(layers),
        targets=tuple(t.strip() for t in targets.split(",") if t.strip()),
    )
    summary = train_expert(
        task,
        run_dir,
        config,
        model=model,
        n_train=n_train,
        n_validation=n_validation,
        n_test=n_test,
    )
    from mafl_graph.svf.report import train_summary_line

    console.print(train_summary_line(summary))
    console.print(f"Wrote {run_dir / 'svf_train.json'}.")


def parse_experts(pairs: list[str]) -> dict[str, str]:
    """``["arithmetic=runs/a/reinforce/best", ...]`` -> ``{label: directory}``."""
    experts: dict[str, str] = {}
    for pair in pairs:
        label, sep, directory = pair.partition("=")
        if not sep or not label.strip() or not directory.strip():
            raise ValueError(f"--expert {pair!r} is not label=directory")
        if label.strip() in experts:
            raise ValueError(f"--expert {label.strip()!r} is given twice")
        experts[label.strip()] = directory.strip()
    return experts


@svf_app.command("classifier")
@with_options(task=TaskOptions, config=ReinforceConfig, exclude=("targets", "layers"))
def classifier_command(
    task: TaskOptions,
    config: ReinforceConfig,
    labels: Annotated[
        str, Opt(help="the domains to tell apart, comma-separated (the experts' labels)")
    ],
    run_dir: Annotated[Path, Opt(help="where the run goes; run again to resume")] = Path(
        "runs/svf-classifier"
    ),
    model: Annotated[str, Opt(help="the local model: smollm2, a GGUF or HF directory")] = (
        "smollm2"
    ),
    layers: Annotated[str | None, Opt(help=LAYERS_HELP)] = None,
    n_train: Annotated[int, Opt(help="training questions (from the train split)")] = 200,
    n_validation: Annotated[int, Opt(help="validation questions, from the train split")] = 50,
    n_test: Annotated[int, Opt(help="held-out test questions")] = 100,
) -> None:
    """Train the classification expert of the classifier strategy (REINFORCE on naming each
    question's domain) on a mixed corpus (--task mixed --tasks ...)."""
    from mafl_graph.svf.report import train_summary_line
    from mafl_graph.svf.runs import train_classifier

    config = dataclasses.replace(config, layers=parse_layers(layers))
    summary = train_classifier(
        task,
        [label.strip() for label in labels.split(",") if label.strip()],
        run_dir,
        config,
        model=model,
        n_train=n_train,
        n_validation=n_validation,
        n_test=n_test,
    )
    console.print(train_summary_line(summary))
    console.print(f"Wrote {run_dir / 'svf_train.json'}.")


@svf_app.command("adapt")
@with_options(task=TaskOptions, cem=CEMConfig, exclude=("seed", "max_new_tokens"))
def adapt_command(
    task: TaskOptions,
    cem: CEMConfig,
    expert: Annotated[
        list[str], Opt(help="label=directory of an SVF expert, once per expert; label: a domain")
    ],
    strategy: Annotated[
        str, Opt(help="comma-separated: prompt, classifier (needs --classifier), cem")
    ] = "prompt,cem",
    classifier: Annotated[
        Path | None, Opt(help="the classification expert (`mafl svf classifier`)")
    ] = None,
    run_dir: Annotated[Path, Opt(help="where the run goes; run again to resume")] = Path(
        "runs/svf-adapt"
    ),
    model: Annotated[str, Opt(help="the local model the experts were made for")] = "smollm2",
    n_test: Annotated[int, Opt(help="test problems of the mixed corpus")] = 100,
    max_new_tokens: Annotated[int, Opt(help="longest reply")] = 256,
    seed: Annotated[int, Opt(help="seeds the corpus and the CEM samples")] = 0,
) -> None:
    """Self-adaptation on a mixed corpus: each strategy against the base and every single
    expert, on the same test problems; writes svf_adapt.json (`mafl report` renders it)."""
    from mafl_graph.svf.report import adapt_rows, rich_table
    from mafl_graph.svf.runs import adapt_run

    summary = adapt_run(
        task,
        parse_experts(expert),
        run_dir,
        strategies=[s.strip() for s in strategy.split(",") if s.strip()],
        classifier=classifier,
        cem=dataclasses.replace(cem, seed=seed, max_new_tokens=max_new_tokens),
        model=model,
        n_test=n_test,
        max_new_tokens=max_new_tokens,
        seed=seed,
    )
    console.print(rich_table(adapt_rows(summary), f"self-adaptation · {run_dir}"))
    console.print(f"Wrote {run_dir / 'svf_adapt.json'}.")
