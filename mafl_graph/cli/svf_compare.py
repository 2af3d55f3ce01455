"""``mafl svf compare``: the base, SVF, LoRA and full fine-tuning on the same training data
per domain, on one harness (:mod:`mafl_graph.svf.compare`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mafl_graph.cli.app import console
from mafl_graph.cli.svf import LAYERS_HELP, parse_layers, svf_app
from mafl_graph.svf.compare import LEARNING_RATES, METHODS

Opt = typer.Option
RATES = ", ".join(f"{method}={rate:g}" for method, rate in LEARNING_RATES.items())


def parse_rates(pairs: list[str]) -> dict[str, float]:
    """``["lora=1e-4", ...]`` -> ``{"lora": 1e-4}``."""
    rates: dict[str, float] = {}
    for pair in pairs:
        method, sep, value = pair.partition("=")
        try:
            rates[method.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not method.strip():
            raise ValueError(f"--learning-rate {pair!r} is not method=number, e.g. lora=3e-4")
    return rates


@svf_app.command("compare")
def compare_command(
    domain: Annotated[
        list[str],
        Opt(
            help="a domain: task, task:module or label=task:module (e.g. "
            "add=dm-math:arithmetic__add_or_sub); once per domain"
        ),
    ],
    methods: Annotated[
        str, Opt(help="comma-separated among base, svf, lora, full (the base is always graded)")
    ] = ",".join(METHODS),
    run_dir: Annotated[Path, Opt(help="where the run goes; run again to resume")] = Path(
        "runs/svf-compare"
    ),
    model: Annotated[str, Opt(help="the local model: smollm2, a GGUF or HF directory")] = (
        "smollm2"
    ),
    n_train: Annotated[int, Opt(help="training problems per domain (the train split)")] = 100,
    n_test: Annotated[int, Opt(help="held-out test problems per domain")] = 100,
    epochs: Annotated[float, Opt(help="passes over each domain's training data")] = 2.0,
    max_steps: Annotated[int | None, Opt(help="at most this many steps (overrides epochs)")] = (
        None
    ),
    batch_size: Annotated[int, Opt(help="examples per step")] = 8,
    learning_rate: Annotated[
        list[str] | None, Opt(help=f"method=rate, once per method to change; default {RATES}")
    ] = None,
    lora_r: Annotated[int, Opt(help="LoRA rank (alpha is twice it)")] = 16,
    layers: Annotated[str | None, Opt(help="SVF: " + LAYERS_HELP)] = None,
    max_new_tokens: Annotated[int, Opt(help="longest reply graded")] = 256,
    dtype: Annotated[str, Opt(help="float32, bfloat16 or float16, for training and grading")] = (
        "float32"
    ),
    seed: Annotated[int, Opt(help="seeds generated tasks and every tuner")] = 0,
    data_dir: Annotated[Path | None, Opt(help="gsm8k/math: local data directory")] = None,
) -> None:
    """Tune the model with SVF, LoRA and full fine-tuning on the same conversations per domain
    (each training in its own process), grade each and the base on the same held-out problems;
    writes svf_compare.json (`mafl report` renders it)."""
    from mafl_graph.svf.compare import RESULT_FILE, compare_rows, compare_tuning
    from mafl_graph.svf.report import rich_table

    summary = compare_tuning(
        domain,
        run_dir,
        methods=[m.strip() for m in methods.split(",") if m.strip()],
        model=model,
        n_train=n_train,
        n_test=n_test,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        learning_rates=parse_rates(learning_rate or []),
        lora_r=lora_r,
        svf_layers=parse_layers(layers),
        max_new_tokens=max_new_tokens,
        dtype=dtype,
        seed=seed,
        data_dir=data_dir,
    )
    console.print(rich_table(compare_rows(summary), f"tuning methods · {run_dir}"))
    console.print(f"Wrote {run_dir / RESULT_FILE}.")
