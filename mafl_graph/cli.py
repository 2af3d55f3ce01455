"""`mafl`: run debates from the command line (more commands arrive with fine-tuning)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import sqlite3
import time
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mafl_graph.debate import CheckpointError, DebateResult, create_debate_graph, run_debates
from mafl_graph.debate.run import check_checkpoint_file
from mafl_graph.evaluate import DebateSummary, summarize_debates
from mafl_graph.redact import redact
from mafl_graph.rundir import prepare_run_dir, read_settings, write_json, write_results
from mafl_graph.society import Society
from mafl_graph.tasks import get_task
from mafl_graph.usage import UsageRecorder

if TYPE_CHECKING:
    from mafl_graph.loop import TunerFactory
    from mafl_graph.tasks.base import Task

console = Console()
# Errors: to stderr, each one line however narrow the terminal or pipe, so a script can grep it.
errors = Console(stderr=True, soft_wrap=True, highlight=False)

# What a command may meet in the files and folders it is pointed at: each is a bad input,
# answered by one line and exit 2, never a traceback.
_BAD_INPUT = (ValueError, TypeError, ImportError, OSError, sqlite3.Error)


class _Commands(typer.Typer):
    """A Typer app whose every command answers a bad input through :func:`_fail`."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
        register = super().command(*args, **kwargs)

        def decorator(function: Callable[..., Any]) -> Any:
            @functools.wraps(function)
            def guarded(*a: Any, **kw: Any) -> Any:
                try:
                    return function(*a, **kw)
                except _BAD_INPUT as exc:
                    _fail(exc)

            return register(guarded)

        return decorator


app = _Commands(help="Multiagent fine-tuning on LangGraph.", no_args_is_help=True)

# The demo's difficulty: see README "Choosing a difficulty" for what the model scores.
DEMO: dict[str, Any] = {
    "high": 20,
    "iterations": 1,
    "n_train": 24,
    "n_test": 12,
    "max_tokens": 48,
}

Opt = typer.Option


def _option(default: Any, help: str) -> Any:
    """A :class:`LoopOptions` field: its default and its --help text."""
    return dataclasses.field(default=default, metadata={"help": help})


@app.command()
def debate(
    task: Annotated[str, Opt(help="arithmetic, gsm8k or math")] = "arithmetic",
    model: Annotated[str, Opt(help="provider:model, e.g. local:smollm2, openai:gpt-4o-mini")] = (
        "local:smollm2"
    ),
    agents: Annotated[int, Opt(help="number of debating agents")] = 3,
    rounds: Annotated[int, Opt(help="debate rounds (1 = independent answers)")] = 2,
    n: Annotated[int, Opt(help="number of problems")] = 20,
    split: Annotated[str, Opt(help="train or test")] = "test",
    run_dir: Annotated[Path, Opt(help="where checkpoints, manifest and results go")] = Path(
        "runs/debate"
    ),
    summarize: Annotated[bool, Opt(help="summarize the other agents' answers")] = True,
    seed: Annotated[int, Opt(help="seed for sampling, problems and tie-breaks")] = 0,
    temperature: Annotated[float | None, Opt(help="sampling temperature")] = None,
    max_tokens: Annotated[int | None, Opt(help="at most this many new tokens per reply")] = None,
    concurrency: Annotated[int, Opt(help="problems debated at once")] = 16,
    terms: Annotated[int | None, Opt(help="arithmetic: numbers per expression")] = None,
    low: Annotated[int | None, Opt(help="arithmetic: smallest number")] = None,
    high: Annotated[int | None, Opt(help="arithmetic: largest number")] = None,
    operators: Annotated[str | None, Opt(help="arithmetic: operator pattern, e.g. '+*+-*'")] = None,
    data_dir: Annotated[Path | None, Opt(help="gsm8k/math: local data directory")] = None,
    requests_per_second: Annotated[
        float | None, Opt(help="hosted: at most this many calls per second, all agents together")
    ] = None,
    max_retries: Annotated[
        int | None, Opt(help="hosted: the SDK's retries per call (429/5xx/timeouts)")
    ] = None,
    timeout: Annotated[float | None, Opt(help="hosted: seconds before a call is retried")] = None,
) -> None:
    """Debate problems of a task and print accuracy (± standard error) and consensus.

    Running it again with the same --run-dir resumes: finished debates are read back, and an
    interrupted one continues from its last saved answer.
    """
    task_options = {
        k: v
        for k, v in {"terms": terms, "low": low, "high": high, "operators": operators}.items()
        if v is not None
    }
    if task.lower() == "arithmetic":
        task_options["seed"] = seed
    elif task_options:
        raise typer.BadParameter(f"{sorted(task_options)} only apply to --task arithmetic.")
    if data_dir is not None:
        task_options["data_dir"] = str(data_dir)
    settings = {
        "task": task,
        "task_options": task_options,
        "model": model,
        "agents": agents,
        "rounds": rounds,
        "n": n,
        "split": split,
        "summarize": summarize,
        "seed": seed,
        "temperature": temperature,
        "max_tokens": max_tokens,
    }
    # How to talk to the provider, not what the experiment is: kept out of the manifest, so a
    # resumed run may use another rate or timeout.
    client = {
        "requests_per_second": requests_per_second,
        "max_retries": max_retries,
        "timeout": timeout,
    }
    _run(settings, run_dir, concurrency, client)


@app.command()
def demo(
    run_dir: Annotated[Path, Opt(help="where the demo's run goes")] = Path("runs/demo"),
) -> None:
    """The whole loop on the embedded SmolLM2-135M, offline: debate, tune each agent, evaluate.

    One iteration on a small problem set (about 10 minutes on 2 CPU cores); prints the table.
    ``mafl compare`` runs every baseline at full size.
    """
    loop_command(
        run_dir=run_dir,
        iterations=DEMO["iterations"],
        n_train=DEMO["n_train"],
        n_test=DEMO["n_test"],
        max_tokens=DEMO["max_tokens"],
        high=DEMO["high"],
        concurrency=DEMO["n_train"],
    )


def _run(
    settings: dict[str, Any],
    run_dir: Path,
    concurrency: int,
    client: dict[str, Any] | None = None,
) -> None:
    """Check everything, then debate; a bad value exits 2 before anything is written."""
    try:
        _check_counts(settings, concurrency)
        the_task = get_task(settings["task"], **settings["task_options"])
        problems = the_task.load(settings["split"], settings["n"])
        model_options = {
            k: settings[k] for k in ("temperature", "max_tokens") if settings[k] is not None
        }
        # Every provider gets the seed (agent i: seed + i), so agents differ and runs replay.
        model_options["seed"] = settings["seed"]
        model_options.update({k: v for k, v in (client or {}).items() if v is not None})
        society = Society.from_model(settings["model"], settings["agents"], **model_options)
        graph = create_debate_graph(
            society,
            the_task,
            rounds=settings["rounds"],
            summarize=settings["summarize"],
            seed=settings["seed"],
        )
        check_checkpoint_file(run_dir / "debates.sqlite")
        prepare_run_dir(run_dir, settings)
        # Tokens and cost per agent and role; a resumed run adds to what was recorded before.
        usage = UsageRecorder(run_dir / "usage.json")
    except (ValueError, TypeError, ImportError, FileNotFoundError) as exc:
        _fail(exc)
    started = time.perf_counter()
    try:
        results = run_debates(
            graph,
            problems,
            run_id="debate",
            db_path=run_dir / "debates.sqlite",
            max_concurrency=concurrency,
            callbacks=[usage],
        )
    except CheckpointError as exc:  # results of an earlier run stay as they were
        _fail(exc)
    finally:
        usage.save()
    seconds = time.perf_counter() - started
    summary = summarize_debates(results, the_task)
    write_results(run_dir, results, {**_as_dict(summary), "seconds": seconds})
    _print_summary(settings, summary, seconds, run_dir)
    console.print(f"usage: {usage.describe()} ({run_dir / 'usage.json'})")
    _report_failures(results)


def _report_failures(results: list[DebateResult]) -> None:
    """Each distinct reason debates failed, once (keys already redacted); exit 1 if all did.

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
        errors.print(f"[red]failed:[/red] {count} debate(s): {escape(' '.join(reason.split()))}")
    if results and len(reasons) and all(not r.ok for r in results):
        errors.print("[red]error:[/red] every debate failed; fix the cause above and run again.")
        raise typer.Exit(1)


def _check_counts(settings: dict[str, Any], concurrency: int) -> None:
    """Refuse counts that cannot make a debate, naming the option and the value."""
    for option, value in (("--agents", settings["agents"]), ("--rounds", settings["rounds"])):
        if value < 1:
            raise ValueError(f"{option} must be at least 1; got {value}.")
    for option, value in (("--n", settings["n"]), ("--concurrency", concurrency)):
        if value < 1:
            raise ValueError(f"{option} must be at least 1; got {value}.")
    if settings["max_tokens"] is not None and settings["max_tokens"] < 1:
        raise ValueError(f"--max-tokens must be at least 1; got {settings['max_tokens']}.")
    temperature = settings["temperature"]
    if temperature is not None and not 0 <= temperature <= 2:
        raise ValueError(f"--temperature must lie in [0, 2]; got {temperature}.")


def _fail(exc: BaseException) -> NoReturn:
    """One line on stderr for a bad input (keys redacted, brackets kept), then exit 2."""
    errors.print(f"[red]error:[/red] {escape(redact(_message(exc)))}")
    raise typer.Exit(2) from exc


def _message(exc: BaseException) -> str:
    """What went wrong, in one line; a file system error names its file and what failed."""
    if isinstance(exc, OSError) and exc.strerror:
        files = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        return f"{files}: {exc.strerror}" if files else exc.strerror
    if isinstance(exc, sqlite3.Error):
        return f"SQLite: {exc}"
    return " ".join(str(exc).split())


def _as_dict(summary: DebateSummary) -> dict[str, Any]:
    def acc(a: Any) -> dict[str, Any]:
        return dict(a.as_dict())

    return {
        **dataclasses.asdict(summary),
        "accuracy": acc(summary.accuracy),
        "round_accuracy": [acc(a) for a in summary.round_accuracy],
    }


def _print_summary(
    settings: dict[str, Any], summary: DebateSummary, seconds: float, run_dir: Path
) -> None:
    table = Table(title=f"{settings['task']} · {settings['model']} · {run_dir}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("debate accuracy (majority of final round)", str(summary.accuracy))
    for i, acc in enumerate(summary.round_accuracy, start=1):
        table.add_row(f"single-agent answers, round {i}", str(acc))
    table.add_row("consensus (agreement with the majority)", f"{100 * summary.consensus:.1f}%")
    table.add_row("failed debates", str(summary.failed))
    table.add_row("undecided grades (grading ran out of time)", str(summary.undecided))
    table.add_row("wall time", f"{seconds:.0f} s")
    console.print(table)


@app.command("datasets")
def datasets_command(
    run_dir: Annotated[Path, Opt(help="a run directory written by `mafl debate`")] = Path(
        "runs/debate"
    ),
    w: Annotated[float, Opt(help="share of D_C- (first answer wrong) in each critic's set")] = (
        0.67
    ),
    target: Annotated[str, Opt(help="consensus (the paper) or reference (ground truth)")] = (
        "consensus"
    ),
    fmt: Annotated[str, Opt("--format", help="openai, vertex, hf or all")] = "all",
    seed: Annotated[int, Opt(help="seed for the critic mix and the example order")] = 0,
    min_examples: Annotated[
        int | None, Opt(help="examples a file needs (default: each provider's minimum)")
    ] = None,
) -> None:
    """Build every agent's generator and critic datasets from a run's debates, validate, export.

    Writes <run-dir>/datasets/<agent>-<role>.{openai.jsonl,vertex.jsonl,hf-messages,
    hf-prompt-completion} and stats.json; exits 1 listing every bad line if a file would be
    rejected by its provider.
    """
    # Imported here so that `mafl debate` does not pay for the `datasets` library at startup.
    from mafl_graph.finetune.datasets import TARGETS, Target, build_datasets, check_w
    from mafl_graph.finetune.export import FORMATS, export_datasets
    from mafl_graph.traces import read_traces_sqlite

    formats = list(FORMATS) if fmt == "all" else [fmt]
    try:
        check_w(w)
        if target not in TARGETS:
            raise ValueError(f"--target must be one of {', '.join(TARGETS)}; got {target!r}.")
        if fmt != "all" and fmt not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)} or all; got {fmt!r}.")
        settings = _run_settings(run_dir)
        the_task = get_task(settings["task"], **settings.get("task_options", {}))
        traces = read_traces_sqlite(run_dir / "debates.sqlite", "debate")
        if not traces.traces:
            raise ValueError(f"{run_dir} holds no finished debate; run `mafl debate` first.")
        agents = settings.get("agents")
        chosen: Target = "reference" if target == "reference" else "consensus"
        other: Target = "consensus" if chosen == "reference" else "reference"
        built = build_datasets(traces, the_task, w=w, target=chosen, seed=seed, n_agents=agents)
        variant = {}
        if other == "consensus" or any(t.reference is not None for t in traces):
            variant = build_datasets(
                traces, the_task, w=w, target=other, seed=seed, n_agents=agents
            )
        result = export_datasets(
            built.values(), run_dir / "datasets", formats=formats, min_examples=min_examples
        )
    except (ValueError, TypeError, FileNotFoundError) as exc:
        _fail(exc)
    report = {
        "run_dir": str(run_dir),
        "task": settings["task"],
        "w": w,
        "target": target,
        "seed": seed,
        "formats": formats,
        "debates": len(traces),
        "unfinished": [dataclasses.asdict(u) for u in traces.unfinished],
        "datasets": {d.name: d.stats.as_dict() for d in built.values()},
        f"examples_with_target_{other}": {d.name: d.stats.examples for d in variant.values()},
        "valid": result.ok,
        "issues": {str(p): [str(i) for i in issues] for p, issues in result.failed.items()},
    }
    (run_dir / "datasets" / "stats.json").write_text(json.dumps(report, indent=2) + "\n")
    _print_dataset_stats(report, target, other, traces.unfinished)
    if not result.ok:
        for path, issues in result.failed.items():
            console.print(f"[red]{escape(str(path))}[/red]: {len(issues)} problem(s)")
            for issue in issues:
                console.print(f"  {escape(str(issue))}")
        console.print("[red]Validation failed: fix the data (or the limits) and run again.[/red]")
        raise typer.Exit(1)
    console.print(f"Wrote {len(result.written)} datasets to {run_dir / 'datasets'}.")


def _run_settings(run_dir: Path) -> dict[str, Any]:
    """The settings a run was made with, from its manifest (how the task is rebuilt)."""
    manifest = run_dir / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found; is {run_dir} a `mafl debate` run?")
    return read_settings(manifest)


def _print_dataset_stats(
    report: dict[str, Any], target: str, other: str, unfinished: list[Any]
) -> None:
    if unfinished:
        shown = ", ".join(
            f"{u.problem_id}" + (f" ({u.error})" if u.error else "") for u in unfinished[:10]
        )
        more = f" and {len(unfinished) - 10} more" if len(unfinished) > 10 else ""
        console.print(
            f"[yellow]{len(unfinished)} unfinished debate(s) skipped:[/yellow] "
            f"{escape(shown)}{more}"
        )
    table = Table(
        title=f"{report['debates']} debates · target {target} · w={report['w']}",
        caption="D_C-, D_C+: used/available; tokens: mean per example (estimated); "
        "trained: its weight-1 turns",
    )
    table.add_column("dataset", no_wrap=True)
    for column in ("size", "D_C-", "D_C+", "tokens", "trained", f"size if {other}"):
        table.add_column(column, justify="right")
    others = report[f"examples_with_target_{other}"]
    for name, s in report["datasets"].items():
        critic = s["role"] == "critic"
        table.add_row(
            name,
            str(s["examples"]),
            f"{s['used_wrong_first']}/{s['wrong_first']}" if critic else "",
            f"{s['used_right_first']}/{s['right_first']}" if critic else "",
            f"{s['mean_tokens']:.0f}",
            f"{s['mean_trained_tokens']:.0f}",
            str(others.get(name, "n/a")),
        )
    console.print(table)
    if undecided := sum(s.get("undecided", 0) for s in report["datasets"].values()):
        console.print(
            f"[yellow]{undecided} answer(s) left out of the datasets:[/yellow] grading them "
            "against the target ran out of time (undecided, not wrong)."
        )


@app.command("tune")
def tune_command(
    run_dir: Annotated[Path, Opt(help="a run directory with datasets from `mafl datasets`")] = Path(
        "runs/debate"
    ),
    backend: Annotated[str, Opt(help="local, openai or vertex")] = "local",
    iteration: Annotated[int, Opt(help="fine-tuning iteration (k > 1 continues from k-1)")] = 1,
    base: Annotated[
        str | None, Opt(help="model to start from (default: smollm2 / gpt-4o-mini / gemini)")
    ] = None,
    previous: Annotated[
        Path | None, Opt(help="tuned.json to continue from (default: iteration k-1's)")
    ] = None,
    retry: Annotated[bool, Opt(help="start new jobs where the ledger records a failure")] = False,
    epochs: Annotated[float | None, Opt(help="passes over each dataset")] = None,
    learning_rate: Annotated[
        float | None, Opt(help="local: learning rate; hosted: learning-rate multiplier")
    ] = None,
    batch_size: Annotated[int | None, Opt(help="examples per step")] = None,
    seed: Annotated[int, Opt(help="seed for the order of examples and the job")] = 0,
    max_steps: Annotated[int | None, Opt(help="local: stop after this many steps")] = None,
    lora_r: Annotated[int, Opt(help="local: LoRA rank")] = 16,
    lora_alpha: Annotated[int, Opt(help="local: LoRA alpha")] = 32,
    full: Annotated[bool, Opt(help="local: full fine-tuning instead of LoRA")] = False,
    model: Annotated[str, Opt(help="local: the base model (smollm2, .gguf or HF dir)")] = (
        "smollm2"
    ),
    suffix: Annotated[str | None, Opt(help="openai: model name suffix")] = None,
    poll_interval: Annotated[float, Opt(help="hosted: first wait between polls (s)")] = 10.0,
    project: Annotated[str | None, Opt(help="vertex: Google Cloud project")] = None,
    location: Annotated[str, Opt(help="vertex: region")] = "us-central1",
    bucket: Annotated[str | None, Opt(help="vertex: gs:// bucket to upload datasets to")] = None,
) -> None:
    """Tune every agent's generator and critic on its dataset; write tuned.json.

    Hosted jobs are recorded in <run-dir>/tuning/iter<k>/ before any waiting, so running the
    same command again after an interruption polls the same jobs instead of paying twice.
    """
    from mafl_graph.finetune.tuners import LocalTuneConfig, get_tuner, load_tuned, tune_run

    try:
        if backend not in ("local", "openai", "vertex"):
            raise ValueError(f"--backend must be local, openai or vertex; got {backend!r}.")
        if iteration < 1:
            raise ValueError(f"--iteration starts at 1; got {iteration}.")
        if previous is None and iteration > 1:
            candidate = run_dir / "tuning" / f"iter{iteration - 1}" / "tuned.json"
            previous = candidate if candidate.is_file() else None
        earlier = load_tuned(previous) if previous else {}
        options: dict[str, Any] = {"iteration": iteration, "retry": retry}
        if backend == "local":
            options["model"] = model
            options["config"] = LocalTuneConfig(
                epochs=epochs if epochs is not None else 1.0,
                learning_rate=learning_rate if learning_rate is not None else 2e-4,
                batch_size=batch_size if batch_size is not None else 4,
                max_steps=max_steps,
                lora_r=lora_r,
                lora_alpha=lora_alpha,
                full=full,
                seed=seed,
            )
        else:
            if backend == "vertex" and not project:
                raise ValueError("--backend vertex needs --project (and --bucket to upload).")
            if backend == "vertex":
                options.update(project=project, location=location, bucket=bucket)
            options["config"] = _hosted_config(
                backend, epochs, learning_rate, batch_size, seed, poll_interval, suffix
            )
        tuner = get_tuner(backend, run_dir, **options)
        (run_dir / "tuning" / f"iter{iteration}").mkdir(parents=True, exist_ok=True)
        config = dataclasses.asdict(options["config"])
        (run_dir / "tuning" / f"iter{iteration}" / f"{backend}-config.json").write_text(
            json.dumps(config, indent=2, default=str) + "\n"
        )
        outcomes = tune_run(
            tuner,
            run_dir,
            base=base,
            previous=earlier,
            on_outcome=lambda o: console.print(
                f"{'[green]done[/green]' if o.tuned else '[red]failed[/red]'} "
                f"agent{o.agent}-{o.role}"
            ),
        )
    except (ValueError, TypeError, ImportError, FileNotFoundError) as exc:
        _fail(exc)
    table = Table(title=f"{run_dir} · {backend} · iteration {iteration}")
    last = "s/step · peak RSS" if backend == "local" else "job"
    for column in ("dataset", "from", "tuned model", last):
        table.add_column(column, overflow="fold")
    for o in outcomes:
        result = o.tuned.model if o.tuned else f"[red]{escape(o.error or '')}[/red]"
        table.add_row(o.dataset.name, o.base, result, _tune_detail(o.tuned))
    console.print(table)
    if any(o.tuned is None for o in outcomes):
        console.print(
            "[red]Some tuning failed; fix the cause and run again (--retry for failed jobs).[/red]"
        )
        raise typer.Exit(1)
    console.print(f"Wrote {run_dir / 'tuned.json'}.")


def _tune_detail(tuned: Any) -> str:
    """The job id of a hosted job; seconds per step and peak RSS of a local one."""
    if tuned is None:
        return ""
    metrics = Path(tuned.model) / "metrics.json"
    if tuned.backend == "local" and metrics.is_file():
        m = json.loads(metrics.read_text())
        return f"{m['seconds_per_step']:.2f} s · {m['peak_rss_mb'] / 1024:.1f} GB"
    return str(tuned.job_id or "")


# The loop and the comparison --------------------------------------------------------------

_TASK_HELP = "arithmetic, gsm8k or math"
_TUNERS = {"local": "local", "openai": "openai", "google_genai": "vertex"}
"""The tuner of each model provider: Gemini is tuned on Vertex AI, the only place it can be."""


@dataclasses.dataclass(frozen=True)
class LoopOptions:
    """What `mafl loop` and `mafl compare` share: the society, the task and how it is tuned.

    Each field is one command-line option of both commands (``help`` in its metadata), so the
    two cannot drift apart; :func:`_with_loop_options` adds them to a command.
    """

    task: str = _option("arithmetic", _TASK_HELP)
    model: str = _option(
        "local:smollm2",
        "the base model: local:smollm2, local:/path, openai:gpt-4o-mini-2024-07-18 or "
        "google_genai:gemini-2.0-flash; it picks the tuner (local LoRA, OpenAI or Vertex AI)",
    )
    agents: int = _option(3, "number of debating agents")
    rounds: int = _option(2, "debate rounds")
    n_train: int = _option(100, "train problems debated per iteration")
    n_test: int = _option(100, "test problems evaluated per iteration")
    w: float = _option(0.67, "share of D_C- in each critic's set")
    seed: int = _option(0, "seed for sampling, problems, mixing and tuning")
    temperature: float | None = _option(None, "sampling temperature")
    max_tokens: int | None = _option(64, "at most this many new tokens per reply")
    concurrency: int = _option(16, "problems debated at once")
    terms: int | None = _option(2, "arithmetic: numbers per expression")
    low: int | None = _option(0, "arithmetic: smallest number")
    high: int | None = _option(20, "arithmetic: largest number")
    operators: str | None = _option("+", "arithmetic: operator pattern")
    data_dir: Path | None = _option(None, "gsm8k/math: local data directory")
    epochs: float | None = _option(None, "tuning: passes over each dataset (local: 2)")
    learning_rate: float | None = _option(
        None, "tuning: local: learning rate (3e-4); hosted: learning-rate multiplier"
    )
    batch_size: int | None = _option(None, "tuning: examples per step (local: 8)")
    lora_r: int = _option(16, "tuning, local: LoRA rank")
    max_steps: int | None = _option(None, "tuning, local: at most this many steps")
    base: str | None = _option(
        None, "tuning, hosted: the model iteration 1 tunes (default: --model's name)"
    )
    poll_interval: float = _option(10.0, "tuning, hosted: first wait between polls (s)")
    project: str | None = _option(None, "tuning, vertex: Google Cloud project")
    location: str = _option("us-central1", "tuning, vertex: region")
    bucket: str | None = _option(None, "tuning, vertex: gs:// bucket to upload datasets to")
    requests_per_second: float | None = _option(
        None, "hosted: at most this many calls per second, all agents together"
    )
    max_retries: int | None = _option(None, "hosted: the SDK's retries per call")
    timeout: float | None = _option(None, "hosted: seconds before a call is retried")

    def arithmetic(self) -> dict[str, Any]:
        return {
            "terms": self.terms,
            "low": self.low,
            "high": self.high,
            "operators": self.operators,
        }


def _with_loop_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` every :class:`LoopOptions` field as an option; it receives ``options``.

    Typer reads a command's signature, and has no way to share a group of options between
    commands, so the wrapper's signature is the command's own parameters plus the fields.
    Called from Python (the demo, the sweep), omitted fields take their defaults.
    """
    fields = dataclasses.fields(LoopOptions)
    hints = typing.get_type_hints(LoopOptions)
    own = [
        p.replace(annotation=typing.get_type_hints(command, include_extras=True)[p.name])
        for p in inspect.signature(command).parameters.values()
        if p.name != "options"
    ]
    shared = [
        inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=f.default,
            annotation=Annotated[hints[f.name], Opt(help=f.metadata["help"])],
        )
        for f in fields
    ]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        chosen = {f.name: kwargs.pop(f.name) for f in fields if f.name in kwargs}
        command(options=LoopOptions(**chosen), **kwargs)

    wrapper.__signature__ = inspect.Signature(own + shared)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in own + shared}
    return wrapper


def _loop_setup(
    o: LoopOptions, tune: Mapping[str, Any] | None = None
) -> tuple[Society, Task, TunerFactory, dict[str, Any]]:
    """Society, task, tuner factory and the settings that pin them in the manifest.

    ``tune``: the tuning config a manifest recorded, instead of the one the options make.
    """
    from mafl_graph.finetune.tuners import LocalTuneConfig, get_tuner

    provider, _, name = o.model.partition(":")
    if provider not in _TUNERS:
        raise ValueError(
            f"--model {o.model!r}: the loop tunes models of {', '.join(_TUNERS)} (e.g. "
            "local:smollm2, openai:gpt-4o-mini-2024-07-18, google_genai:gemini-2.0-flash)."
        )
    backend = _TUNERS[provider]
    task_options = {k: v for k, v in o.arithmetic().items() if v is not None}
    if o.task.lower() == "arithmetic":
        task_options["seed"] = o.seed
    elif task_options:
        raise ValueError(f"{sorted(task_options)} only apply to --task arithmetic.")
    if o.data_dir is not None:
        task_options["data_dir"] = str(o.data_dir)
    the_task = get_task(o.task, **task_options)
    sampling = {"temperature": o.temperature, "max_tokens": o.max_tokens, "seed": o.seed}
    client = {"requests_per_second": o.requests_per_second, "max_retries": o.max_retries}
    client["timeout"] = o.timeout
    model_options: dict[str, Any] = {
        k: v for k, v in {**sampling, **client}.items() if v is not None
    }
    if backend == "local":
        model_options = {k: v for k, v in model_options.items() if k not in client}
    serving: dict[str, Any] = {}
    if backend == "vertex" and o.project:
        # Tuned Gemini is served by Vertex AI: the base model is too, from the same project
        # and location, so every iteration is one service with one set of credentials.
        serving = {"vertexai": True, "project": o.project, "location": o.location}
    society = Society.from_model(o.model, o.agents, **model_options, **serving)
    settings: dict[str, Any] = {
        "model": o.model,
        "task_options": task_options,
        "temperature": o.temperature,
        "max_tokens": o.max_tokens,
    }
    if serving:
        settings["serving"] = serving
    if backend == "local":
        config: Any = LocalTuneConfig(
            **(
                tune
                or {
                    "seed": o.seed,
                    "epochs": o.epochs if o.epochs is not None else 2.0,
                    "learning_rate": o.learning_rate or 3e-4,
                    "batch_size": o.batch_size or 8,
                    "lora_r": o.lora_r,
                    "lora_alpha": 2 * o.lora_r,
                    "max_steps": o.max_steps,
                }
            )
        )
        factory = functools.partial(get_tuner, "local", model=name, config=config)
    else:
        config = _hosted_config(
            backend, o.epochs, o.learning_rate, o.batch_size, o.seed, o.poll_interval
        )
        options: dict[str, Any] = {"config": config, "base": o.base or name}
        if backend == "vertex":
            options.update(project=o.project, location=o.location, bucket=o.bucket)
        factory = functools.partial(get_tuner, backend, **options)
        settings["tune_base"] = options["base"]
    settings["tune"] = dataclasses.asdict(config)
    return society, the_task, factory, settings


def _hosted_config(
    backend: str,
    epochs: float | None,
    learning_rate: float | None,
    batch_size: int | None,
    seed: int,
    poll_interval: float,
    suffix: str | None = None,
) -> Any:
    """An OpenAI or Vertex tuning config from the options (unset: the provider chooses).

    ``suffix`` names OpenAI's tuned models; Vertex has no such field.
    """
    from mafl_graph.finetune.tuners import Backoff, OpenAITuneConfig, VertexTuneConfig

    backoff = Backoff(initial=poll_interval, maximum=max(poll_interval, 300.0))
    if backend == "openai":
        return OpenAITuneConfig(
            epochs=int(epochs) if epochs else "auto",
            learning_rate_multiplier=learning_rate or "auto",
            batch_size=batch_size or "auto",
            seed=seed,
            suffix=suffix,
            backoff=backoff,
        )
    return VertexTuneConfig(
        epochs=int(epochs) if epochs else None,
        learning_rate_multiplier=learning_rate,
        batch_size=batch_size,
        backoff=backoff,
    )


def _setup_or_exit(o: LoopOptions) -> tuple[Society, Task, TunerFactory, dict[str, Any]]:
    """:func:`_loop_setup` for a command: a bad option exits 2 before anything runs."""
    try:
        if o.model.startswith("google_genai:") and not o.project:
            raise ValueError("Tuning Gemini needs --project (and --bucket to upload datasets).")
        return _loop_setup(o)
    except (ValueError, TypeError, ImportError, FileNotFoundError) as exc:
        _fail(exc)


@app.command("loop")
@_with_loop_options
def loop_command(
    options: LoopOptions,
    run_dir: Annotated[Path, Opt(help="where everything of the run goes")] = Path("runs/loop"),
    method: Annotated[str, Opt(help="multiagent, single (STaR) or majority (majority FT)")] = (
        "multiagent"
    ),
    iterations: Annotated[int, Opt(help="fine-tuning iterations")] = 2,
    summarize: Annotated[bool, Opt(help="summarize the other agents' answers")] = True,
    critics: Annotated[bool, Opt(help="tune critics (--no-critics: the ablation)")] = True,
) -> None:
    """Iterate debate(train) -> datasets -> tune -> debate(test); resumable; prints a table.

    Tokens and cost per agent and role go to <run-dir>/usage.json.
    """
    from mafl_graph.diversity import measure
    from mafl_graph.loop import MultiagentFinetuning
    from mafl_graph.report import iteration_table

    society, the_task, tuner, settings = _setup_or_exit(options)
    try:
        loop = MultiagentFinetuning(
            society,
            the_task,
            tuner,
            iterations=iterations,
            n_train=options.n_train,
            n_test=options.n_test,
            rounds=options.rounds,
            summarize=summarize,
            method=method,  # type: ignore[arg-type]
            tune_critics=critics,
            w=options.w,
            seed=options.seed,
            concurrency=options.concurrency,
            diversity=measure,
            settings=settings,
        )
    except ValueError as exc:
        _fail(exc)
    _logging()
    metrics = loop.run(run_dir)
    console.print(iteration_table(metrics, title=f"{method} · {run_dir}"))
    console.print(f"usage: {UsageRecorder(run_dir / 'usage.json').describe()}")


@app.command("compare")
@_with_loop_options
def compare_command(
    options: LoopOptions,
    run_dir: Annotated[Path, Opt(help="one subdirectory per method goes here")] = Path(
        "runs/compare"
    ),
    methods: Annotated[str, Opt(help="comma-separated subset of the methods")] = ",".join(
        ("majority-vote", "multiagent", "single", "majority", "no-summarizer", "no-critics")
    ),
    iterations: Annotated[int, Opt(help="iterations of multiagent and single-agent FT")] = 2,
    ablation_iterations: Annotated[int, Opt(help="iterations of majority FT, ablations")] = 1,
    diversity: Annotated[bool, Opt(help="measure diversity after each evaluation")] = True,
) -> None:
    """Every baseline of the paper's Table 1 on one harness, then the report (table + plots).

    Each method's directory gets its own usage.json (tokens and cost per agent and role).
    """
    from mafl_graph.compare import compare_methods
    from mafl_graph.diversity import measure
    from mafl_graph.report import write_report

    society, the_task, tuner, settings = _setup_or_exit(options)
    _logging()
    try:
        compare_methods(
            society,
            the_task,
            tuner,
            run_dir,
            methods=[m.strip() for m in methods.split(",") if m.strip()],
            iterations=iterations,
            ablation_iterations=ablation_iterations,
            n_train=options.n_train,
            n_test=options.n_test,
            rounds=options.rounds,
            w=options.w,
            seed=options.seed,
            concurrency=options.concurrency,
            diversity=measure if diversity else None,
            settings=settings,
        )
    except ValueError as exc:  # an unknown method, or a directory made with other settings
        _fail(exc)
    report = write_report(run_dir)
    console.print(report.read_text())


@app.command("report")
def report_command(
    run_dir: Annotated[Path, Opt(help="a `mafl compare` or `mafl loop` directory")] = Path(
        "runs/compare"
    ),
) -> None:
    """Write report.md (Table 1 style), accuracy.png and diversity.png; print the table."""
    from mafl_graph.report import write_report

    try:
        path = write_report(run_dir)
    except (FileNotFoundError, ValueError) as exc:
        _fail(exc)
    console.print(path.read_text())
    console.print(f"Wrote {path}.")


@app.command("eval")
def eval_command(
    run_dir: Annotated[Path, Opt(help="a `mafl loop` run whose tuned society is evaluated")] = (
        Path("runs/loop")
    ),
    train_task: Annotated[str, Opt(help="the task the society was tuned on (checked)")] = (
        "arithmetic"
    ),
    test_task: Annotated[str, Opt(help="the task to evaluate on: " + _TASK_HELP)] = "gsm8k",
    n: Annotated[int, Opt(help="test problems")] = 100,
    data_dir: Annotated[Path | None, Opt(help="gsm8k/math: local data directory")] = None,
    terms: Annotated[int | None, Opt(help="arithmetic test task: numbers per expression")] = None,
    low: Annotated[int | None, Opt(help="arithmetic test task: smallest number")] = None,
    high: Annotated[int | None, Opt(help="arithmetic test task: largest number")] = None,
    operators: Annotated[str | None, Opt(help="arithmetic test task: operators")] = None,
    concurrency: Annotated[int, Opt(help="problems debated at once")] = 16,
    requests_per_second: Annotated[
        float | None, Opt(help="hosted: at most this many calls per second, all agents together")
    ] = None,
    max_retries: Annotated[int | None, Opt(help="hosted: the SDK's retries per call")] = None,
    timeout: Annotated[float | None, Opt(help="hosted: seconds before a call is retried")] = None,
) -> None:
    """Zero-shot transfer (paper Fig. 5): the base and the tuned society on another task."""
    from mafl_graph.evaluate import evaluate_society
    from mafl_graph.finetune.tuners import load_tuned, tuned_society
    from mafl_graph.report import markdown_table, rows

    try:
        settings = _run_settings(run_dir)
        if settings["task"] != train_task:
            raise ValueError(f"{run_dir} was tuned on {settings['task']!r}, not {train_task!r}.")
        tuned_path = run_dir / "tuned.json"
        if not tuned_path.is_file():
            raise FileNotFoundError(f"{tuned_path} not found: the loop has not tuned yet.")
        client = {"requests_per_second": requests_per_second, "max_retries": max_retries}
        client["timeout"] = timeout
        if "n_train" in settings:  # a `mafl loop` run: its society, tuned by its method's rules
            loop, settings = _loop_from_manifest(settings, client)
            base, tuned = loop.society, loop.society_after(load_tuned(tuned_path))
        else:  # `mafl debate` + `mafl tune`: its society, each tuned (agent, role) replaced
            base = _debate_society(run_dir, settings, client)
            tuned = tuned_society(base, load_tuned(tuned_path))
        options = {
            k: v
            for k, v in {"terms": terms, "low": low, "high": high, "operators": operators}.items()
            if v is not None
        }
        if data_dir is not None:
            options["data_dir"] = str(data_dir)
        target = get_task(test_task, **options)
        problems = target.load("test", n)
        societies = {"base": base, "tuned": tuned}
    except (ValueError, TypeError, ImportError, FileNotFoundError, KeyError) as exc:
        _fail(exc)
    out = run_dir / "transfer" / target.name
    usage = UsageRecorder(out / "usage.json")
    records = []
    try:
        for iteration, (name, society) in enumerate(societies.items()):
            evaluation = evaluate_society(
                society,
                target,
                problems,
                db_path=out / f"{name}.sqlite",
                rounds=settings["rounds"],
                summarize=settings["summarize"],
                seed=settings["seed"],
                concurrency=concurrency,
                metadata={"iteration": iteration, "split": "transfer"},
                callbacks=[usage],
            )
            records.append({"iteration": iteration, "eval": evaluation.as_dict()})
    finally:
        usage.save()
    write_json(out / "metrics.json", records)
    table = markdown_table(rows({f"tuned on {train_task}, tested on {target.name}": records}))
    (out / "report.md").write_text(table)
    console.print(table)


@app.command("sweep")
@_with_loop_options
def sweep_command(
    options: LoopOptions,
    run_dir: Annotated[Path, Opt(help="one loop per setting goes under here")] = Path("runs/sweep"),
    grid: Annotated[
        list[str],
        Opt(help="NAME=V1,V2 (agents, rounds, w, learning_rate, epochs, n_train); repeatable"),
    ] = ["w=0.5,0.67,0.9"],  # noqa: B006 - typer reads list defaults, never mutated
    iterations: Annotated[int, Opt(help="iterations of each loop")] = 1,
) -> None:
    """Run the loop for every combination of a grid of settings; write one table.

    Every other option is the loop's, for every grid point (the swept ones excepted).
    """
    import itertools

    from mafl_graph.report import markdown_table, rows

    swept = {"agents": int, "rounds": int, "n_train": int, "w": float}
    swept |= {"learning_rate": float, "epochs": float}
    axes: dict[str, list[Any]] = {}
    try:
        for item in grid:
            name, _, values = item.partition("=")
            if name not in swept or not values:
                raise ValueError(
                    f"--grid {item!r}: expected NAME=V1,V2 with NAME in {list(swept)}."
                )
            axes[name] = [swept[name](v) for v in values.split(",")]
    except ValueError as exc:
        _fail(exc)
    table: dict[str, list[dict[str, Any]]] = {}
    for combination in itertools.product(*axes.values()):
        point = dict(zip(axes, combination, strict=True))
        label = ",".join(f"{k}={v}" for k, v in point.items())
        chosen = {**dataclasses.asdict(options), **point}
        loop_command(run_dir=run_dir / label, iterations=iterations, **chosen)
        table[label] = _read_metrics(run_dir / label / "metrics.json")
    text = markdown_table(rows(table))
    (run_dir / "sweep.md").write_text(text)
    console.print(text)
    console.print(f"Wrote {run_dir / 'sweep.md'}.")


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads(path.read_text())
    return records


def _debate_society(
    run_dir: Path, settings: Mapping[str, Any], client: Mapping[str, Any]
) -> Society:
    """The society a `mafl debate` run was made with, from its manifest's settings."""
    missing = [k for k in ("model", "agents", "rounds", "summarize", "seed") if k not in settings]
    if missing:
        raise ValueError(
            f"{run_dir / 'manifest.json'} lacks the settings {missing}: `mafl eval` takes a run "
            "directory made by `mafl loop`, or by `mafl debate` then `mafl tune`."
        )
    options = {k: settings[k] for k in ("temperature", "max_tokens") if settings.get(k) is not None}
    options["seed"] = settings["seed"]  # as `mafl debate` made it: agent i samples with seed + i
    options.update({k: v for k, v in client.items() if v is not None})
    return Society.from_model(settings["model"], settings["agents"], **options)


def _loop_from_manifest(
    settings: dict[str, Any], client: Mapping[str, Any] | None = None
) -> tuple[Any, dict[str, Any]]:
    """The loop a run directory was made with, rebuilt from its manifest's settings.

    ``client``: how to reach a hosted provider (rate, retries, timeout), never in a manifest.
    """
    from mafl_graph.loop import MultiagentFinetuning

    task_options = dict(settings.get("task_options", {}))
    data_dir = task_options.get("data_dir")
    options = LoopOptions(
        task=settings["task"],
        model=settings["model"],
        agents=settings["agents"],
        seed=settings["seed"],
        temperature=settings.get("temperature"),
        max_tokens=settings.get("max_tokens"),
        data_dir=Path(data_dir) if data_dir else None,
        base=settings.get("tune_base"),
        terms=task_options.get("terms"),
        low=task_options.get("low"),
        high=task_options.get("high"),
        operators=task_options.get("operators"),
        **{k: v for k, v in settings.get("serving", {}).items() if k != "vertexai"},
        **dict(client or {}),
    )
    society, the_task, tuner, _ = _loop_setup(options, tune=settings.get("tune"))
    loop = MultiagentFinetuning(
        society,
        the_task,
        tuner,
        n_train=settings["n_train"],
        n_test=settings["n_test"],
        rounds=settings["rounds"],
        summarize=settings["summarize"],
        method=settings["method"],
        tune_critics=settings["tune_critics"],
        w=settings["w"],
        seed=settings["seed"],
    )
    return loop, settings


def _logging() -> None:
    """Step messages of the loop on the console, next to tqdm's progress bars."""
    import logging

    from rich.logging import RichHandler

    handler = RichHandler(console=console, show_path=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    for name in ("mafl_graph.loop", "mafl_graph.compare"):
        logging.getLogger(name).setLevel(logging.INFO)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover - `python -m mafl_graph.cli`
    main()
