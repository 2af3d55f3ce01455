"""``mafl experts cooperate``: every way the experts can cooperate, on the same problems.

    mafl experts cooperate --run-dir runs/experts --method kmeans \\
        --evolved runs/experts/evoprompt/kmeans-ga \\
        --mixer runs/experts/experts/kmeans/mixer.safetensors

Writes ``cooperate/report.md`` and ``cooperate/cooperate.json`` in the run directory (see
:mod:`mafl_graph.experts.cooperate`); a rerun reads back every strategy already measured.
Registered on the ``mafl experts`` group by importing this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mafl_graph.cli.app import console
from mafl_graph.cli.experts import DEFAULT_RUN, RUN_DIR_HELP, experts_app

Opt = typer.Option


@experts_app.command("cooperate")
def cooperate_command(
    run_dir: Annotated[Path, Opt(help=RUN_DIR_HELP)] = DEFAULT_RUN,
    method: Annotated[str, Opt(help="the clustering whose trained experts cooperate")] = "kmeans",
    n: Annotated[int, Opt(help="problems per split")] = 40,
    splits: Annotated[str, Opt(help="splits to measure on: test, cross-domain")] = (
        "test,cross-domain"
    ),
    cross_domain: Annotated[
        str, Opt(help="DeepMind `_composed` modules of the cross-domain split (default: all)")
    ] = "",
    evolved: Annotated[
        Path | None, Opt(help="an EvoPrompt run directory (mafl experts evolve): its prompts")
    ] = None,
    mixer: Annotated[
        Path | None, Opt(help="a probe file (mafl experts mixer): the mixer rows")
    ] = None,
    rounds: Annotated[int, Opt(help="rounds of each debate")] = 2,
    summarize: Annotated[bool, Opt(help="debates use a summarizer")] = False,
    max_tokens: Annotated[int, Opt(help="new tokens per reply")] = 128,
    temperature: Annotated[float, Opt(help="sampling temperature of every model")] = 0.7,
    seed: Annotated[int, Opt(help="sampling seed (agent i gets seed + i)")] = 0,
    concurrency: Annotated[int, Opt(help="debates in flight")] = 16,
) -> None:
    """Measure the base, each expert, the experts' debate (plain and evolved prompts), the token
    mixer alone and debating, and the base's majority vote at as many answers as the debate,
    on the test split by domain and on the cross-domain split."""
    from mafl_graph.experts.cooperate import CooperateSettings, cooperate, strategies
    from mafl_graph.experts.evoprompt import EvolvedPrompts
    from mafl_graph.experts.runs import load_run, trained_experts
    from mafl_graph.local import LocalChatModel

    settings = CooperateSettings(
        method=method,
        n=n,
        splits=tuple(s.strip() for s in splits.split(",") if s.strip()),
        cross_domain=tuple(m.strip() for m in cross_domain.split(",") if m.strip()),
        rounds=rounds,
        summarize=summarize,
        max_new_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        concurrency=concurrency,
    )
    _, corpus_settings, _ = load_run(run_dir)
    model_path = corpus_settings["model"]
    sampling: dict[str, Any] = {"temperature": temperature, "max_new_tokens": max_tokens}
    experts = {
        f"expert{e.pile}": LocalChatModel(
            model_path=model_path, adapter=e.tuned.model, seed=seed, **sampling
        )
        for e in trained_experts(run_dir, method)
        if e.tuned is not None
    }
    roles, instruction = None, ""
    if evolved is not None:
        result = EvolvedPrompts.load(evolved)
        roles, instruction = list(result.roles), result.instruction
        if len(roles) != len(experts):
            raise ValueError(
                f"{evolved} evolved {len(roles)} roles for a society of {len(experts)} experts "
                f"of --method {method}; evolve this method's experts"
            )
    mixture = None
    if mixer is not None:
        from mafl_graph.experts.mixer import MixtureChatModel

        first = MixtureChatModel(mixer=str(mixer), model_path=model_path, seed=seed, **sampling)

        def mixture(i: int) -> MixtureChatModel:
            return first if i == 0 else first.model_copy(update={"seed": seed + i})

    rows = strategies(
        experts,
        lambda i: LocalChatModel(model_path=model_path, seed=seed + i, **sampling),
        settings,
        roles=roles,
        instruction=instruction,
        mixer=mixture,
    )
    cooperate(run_dir, settings, rows, progress=lambda what: console.print(what))
    console.print((Path(run_dir) / "cooperate" / "report.md").read_text(), markup=False)
