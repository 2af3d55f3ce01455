"""``mafl experts``: a mixed corpus split into piles, one expert per pile, and their measures.

    mafl experts corpus   --n 240 --test-n 60     (task options as `mafl debate`'s)
    mafl experts cluster  --method mc-em,llm-union-find,kmeans,random,oracle,single --k 3
    mafl experts train    --method kmeans,single
    mafl experts evaluate --method kmeans,single --per-domain 20
    mafl experts report

Each takes ``--run-dir`` (default ``runs/experts``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from mafl_graph.cli.app import _Commands, app, console, with_options
from mafl_graph.config import TaskOptions
from mafl_graph.experts.config import MCEMConfig, UnionFindConfig
from mafl_graph.finetune.tuners.options import TuneOptions

Opt = typer.Option

experts_app = _Commands(
    help="Specialised experts from a mixed corpus: cluster, train, evaluate, report.",
    no_args_is_help=True,
)
app.add_typer(experts_app, name="experts")

RUN_DIR_HELP = "the experts run directory"
METHOD_HELP = "one or more of mc-em, llm-union-find, kmeans, random, oracle, single (commas)"
DEFAULT_RUN = Path("runs/experts")


def _methods(text: str) -> list[str]:
    from mafl_graph.experts.clustering import METHODS

    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise ValueError(f"--method names no method; choose from {', '.join(METHODS)}")
    if unknown := [m for m in methods if m not in METHODS]:
        raise ValueError(f"unknown --method {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    return methods


@experts_app.command("corpus")
@with_options(task=TaskOptions, defaults={"task": "mixed"})
def corpus_command(
    task: TaskOptions,
    run_dir: Annotated[Path, Opt(help=RUN_DIR_HELP)] = DEFAULT_RUN,
    n: Annotated[int, Opt(help="documents to cluster")] = 240,
    test_n: Annotated[int, Opt(help="held-out documents (the other split) for evaluation")] = 60,
    split: Annotated[str, Opt(help="the split the documents come from")] = "train",
    seed: Annotated[int, Opt(help="seed of the draw (and of generated tasks)")] = 0,
    base_model: Annotated[str, Opt(help="the model whose tokens the budget counts")] = "smollm2",
    max_tokens: Annotated[int | None, Opt(help="token budget per document")] = 512,
    too_long: Annotated[str, Opt(help="truncate (and count) or refuse (listing them)")] = (
        "truncate"
    ),
) -> None:
    """Draw the documents to cluster (question + reference answer), hidden domains kept aside."""
    from mafl_graph.experts.runs import CorpusSettings, prepare_corpus

    options = {
        k: str(v) if isinstance(v, Path) else v
        for k, v in dataclasses.asdict(task).items()
        if k != "task" and v is not None
    }
    settings = CorpusSettings(
        task=task.task,
        task_options=options,
        split=split,
        n=n,
        test_n=test_n,
        seed=seed,
        model=base_model,
        max_tokens=max_tokens,
        too_long=too_long,  # type: ignore[arg-type]
    )
    corpus = prepare_corpus(run_dir, settings)
    domains = corpus.domains
    counts = ", ".join(f"{d}: {domains.count(d)}" for d in sorted(set(domains)))
    console.print(
        f"{len(corpus)} documents ({counts}); {len(corpus.truncated)} truncated to "
        f"{max_tokens} tokens. Wrote {run_dir}."
    )


@experts_app.command("cluster")
@with_options(
    mc_em=MCEMConfig,
    union_find=UnionFindConfig,
    exclude=("k", "seed", "model", "dtype"),
)
def cluster_command(
    mc_em: MCEMConfig,
    union_find: UnionFindConfig,
    run_dir: Annotated[Path, Opt(help=RUN_DIR_HELP)] = DEFAULT_RUN,
    method: Annotated[str, Opt(help=METHOD_HELP)] = "kmeans",
    k: Annotated[int, Opt(help="piles (the oracle: the number of domains)")] = 3,
    seed: Annotated[int, Opt(help="seed of every method")] = 0,
    model: Annotated[
        str, Opt(help="llm-union-find: the chat model, e.g. local:smollm2, openai:gpt-4o-mini")
    ] = "local:smollm2",
    chat_temperature: Annotated[float, Opt(help="llm-union-find: the model's temperature")] = 0.7,
    chat_max_tokens: Annotated[int, Opt(help="llm-union-find: tokens per reply")] = 24,
) -> None:
    """Split the run's corpus into k piles with each method; print NMI/ARI/purity and cost.

    A method already clustered in the run directory is read back; MC-EM resumes from its
    checkpoint, union-find from its journal of model calls.
    """
    from mafl_graph.experts import runs
    from mafl_graph.experts.report import console_table, quality_rows

    methods = _methods(method)
    _, settings, corpus = runs.load_run(run_dir)
    chat = None
    if "llm-union-find" in methods:
        from mafl_graph.models import resolve_model

        chat = resolve_model(model, temperature=chat_temperature, max_tokens=chat_max_tokens)
    mc_em = dataclasses.replace(mc_em, seed=seed, model=settings["model"])
    union_find = dataclasses.replace(union_find, seed=seed)
    results = {}
    for name in methods:
        results[name] = runs.cluster(
            run_dir,
            name,
            k=k,
            seed=seed,
            mc_em=mc_em,
            union_find=union_find,
            chat_model=chat,
            # in the manifest: a rerun asking another model, or the same one otherwise, is refused
            chat_model_name=f"{model} temperature={chat_temperature} max_tokens={chat_max_tokens}",
        )
    console.print(console_table(quality_rows(results, corpus.domains), title=str(run_dir)))


@experts_app.command("train")
@with_options(options=TuneOptions, exclude=("tuner",))
def train_command(
    options: TuneOptions,
    run_dir: Annotated[Path, Opt(help=RUN_DIR_HELP)] = DEFAULT_RUN,
    method: Annotated[str, Opt(help=METHOD_HELP)] = "kmeans",
    backend: Annotated[str, Opt(help="the tuning backend: local, svf, openai, vertex")] = "local",
    model: Annotated[str | None, Opt(help="the model to tune (default: the backend's)")] = None,
    seed: Annotated[int, Opt(help="seed of the example order")] = 0,
) -> None:
    """Tune one expert per pile of each method's clustering (a pile tuned is not tuned again)."""
    from mafl_graph.experts import runs

    for name in _methods(method):
        experts = runs.train(
            run_dir, name, backend=backend, options=options, model=model or "", seed=seed
        )
        for e in experts:
            where = e.tuned.model if e.tuned else "no expert (empty pile)"
            console.print(f"{name} pile {e.pile}: {e.documents} documents -> {where}")


@experts_app.command("evaluate")
def evaluate_command(
    run_dir: Annotated[Path, Opt(help=RUN_DIR_HELP)] = DEFAULT_RUN,
    method: Annotated[str, Opt(help=METHOD_HELP)] = "kmeans,single",
    per_domain: Annotated[
        int | None, Opt(help="held-out problems per domain (default: all)")
    ] = None,
    accuracy: Annotated[bool, Opt(help="also greedy accuracy (generates: slower)")] = False,
    max_tokens: Annotated[int, Opt(help="accuracy: tokens per answer")] = 256,
) -> None:
    """Each trained expert's perplexity (and accuracy) on held-out problems of each domain."""
    from mafl_graph.experts import runs
    from mafl_graph.experts.specialisation import matrix_table

    measured = runs.evaluate(
        run_dir,
        _methods(method),
        per_domain=per_domain,
        accuracy=accuracy,
        max_new_tokens=max_tokens,
    )
    perplexity = {k: v for r in measured.values() for k, v in r["perplexity"].items()}
    console.print("Perplexity of the reference replies (lower is better):")
    console.print(matrix_table(perplexity), markup=False)
    if accuracy:
        acc = {k: v for r in measured.values() for k, v in r["accuracy"].items()}
        console.print("Greedy accuracy:")
        console.print(matrix_table(acc, percent=True, best="max"), markup=False)


@experts_app.command("report")
def report_command(
    run_dir: Annotated[Path, Opt(help=RUN_DIR_HELP)] = DEFAULT_RUN,
) -> None:
    """Write report.md (quality, composition, cost, specialisation) and composition.png."""
    from mafl_graph.experts.report import write_experts_report

    path, table = write_experts_report(run_dir)
    console.print(table)
    console.print(f"Wrote {path}.")
