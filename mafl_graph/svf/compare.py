"""One harness for the base, SVF, LoRA and full fine-tuning, each tuned on the same data per
domain and graded greedily on the same held-out problems.

Each domain is a task spec as a mixed corpus reads one (``[label=]task[:module]``, e.g.
``arithmetic`` or ``add=dm-math:arithmetic__add_or_sub``; arithmetic takes the loop's sums of
two numbers up to 30). Its training data is one conversation per training problem: the
task's own question prompt, answered by a reply that the task's grader accepts, built from
the reference: the worked solution where a problem carries one (``metadata["solution"]``),
else the reference in the form the task reads (``\\boxed{answer}`` for maths, a fenced
``python`` block for code). Supervised data from the references is what all three tuners can
learn from alike, so a difference between them is the method's, not the data's.

Each (domain, method) trains in a subprocess of its own through the registered tuners
(``svf``; ``local``, LoRA; ``local`` with ``full=True``), so its peak resident memory is that
run's alone; the child records its trainable parameters (the elements of the tensors it
saved), its wall and training time, its peak RSS and the bytes it wrote, in
``training/<domain>/<method>.json``, written atomically once the tuned model is in place. A
run that has that record is never trained again; one without it starts over from nothing,
so no record mixes two runs' measurements.

The run directory::

    svf_compare_run.json          the settings (a resumed run must have the same)
    datasets/<domain>.openai.jsonl the training conversations every method tunes on
    training/<domain>/<method>/   the tuner's run directory (ledger, adapter or model)
    training/<domain>/<method>.json  what that training measured
    evaluations/<domain>/<method>.json  each test problem's grade (resumable in chunks)
    svf_compare.json              the result; report.md (``mafl report``) renders it
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from mafl_graph.rundir import write_json
from mafl_graph.svf.config import DTYPES

if TYPE_CHECKING:
    from rich.table import Table

    from mafl_graph.tasks.base import Problem, Task

RUN_FILE = "svf_compare_run.json"
RESULT_FILE = "svf_compare.json"
METHODS = ("base", "svf", "lora", "full")
TUNED = ("svf", "lora", "full")
BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "svf": ("svf", {}),
    "lora": ("local", {}),
    "full": ("local", {"full": True}),
}
"""Each tuned method: the registered tuner that trains it, and its config's own settings."""
LEARNING_RATES = {"svf": 2e-3, "lora": 3e-4, "full": 2e-5}
"""SVF: the Transformer² reference's Adam rate; LoRA: the local tuner's default. Full
fine-tuning moves every weight with nothing like LoRA's low rank and alpha/r scale to bound
the update, so it takes a rate about fifteen times smaller, in the range commonly used to
fine-tune whole small models. Each can be set (``learning_rates``)."""
_AGENT: Final = 0
_ROLE: Final = "generator"


@dataclasses.dataclass(frozen=True)
class Domain:
    """One domain of the comparison: its label, the task, and the options that made it."""

    label: str
    spec: str
    task: Task
    options: dict[str, Any]


def parse_domain(spec: str, *, seed: int = 0, data_dir: str | Path | None = None) -> Domain:
    """The domain ``spec`` names (``[label=]task[:module]``, as :class:`~mafl_graph.tasks.Mixed`
    reads each of its items); arithmetic takes the loop's defaults where the spec says
    nothing, ``seed`` goes to generated tasks, ``data_dir`` to those reading local files."""
    from mafl_graph.config import LOOP_TASK_DEFAULTS
    from mafl_graph.tasks import get_task, task_class
    from mafl_graph.tasks.mixed import _parse_tasks

    if "," in spec or not spec.strip():
        raise ValueError(
            f"--domain {spec!r} is not one domain: give each as [label=]task[:module], "
            "one --domain per domain"
        )
    ((label, source),) = _parse_tasks(spec).items()
    name, _, module = str(source).partition(":")
    if name.strip().lower() == "mixed":
        raise ValueError(f"--domain {spec!r}: a domain is one task, not a mixed corpus")
    cls = task_class(name.strip())
    takes = set(inspect.signature(cls).parameters)
    options = {k: v for k, v in LOOP_TASK_DEFAULTS.get(name.lower(), {}).items() if k in takes}
    if module:
        if "module" not in takes:
            raise ValueError(f"--domain {spec!r}: task {name!r} has no modules")
        options["module"] = module
    if "seed" in takes:
        options["seed"] = seed
    if "data_dir" in takes and data_dir is not None:
        options["data_dir"] = str(data_dir)
    return Domain(label, spec, get_task(name.strip(), **options), {"task": name, **options})


def reference_reply(task: Task, problem: Problem) -> str:
    """A reply to ``problem`` that its task grades right: its worked solution where it has one
    (``metadata["solution"]``, with the boxed answer appended if it states none), else the
    reference as ``\\boxed{...}``, then in a fenced ``python`` block, then bare: the first
    form the task reads back as the reference (or, failing that, grades equivalent to it)."""
    from mafl_graph.grading import Verdict
    from mafl_graph.tasks.base import grade_answer, task_for

    if problem.answer is None:
        raise ValueError(f"problem {problem.id!r} has no reference answer to train on")
    own = task_for(task, problem)
    # Stripped: a reply that starts with a newline would merge with the template's own
    # newline after "assistant" into one token, and the trained span could not be found.
    answer = problem.answer.strip()
    boxed = f"The answer is \\boxed{{{answer}}}."
    forms = [boxed, f"```python\n{answer}\n```", answer]
    solution = str(problem.metadata.get("solution") or "").strip()
    if solution:
        forms[:0] = [solution, f"{solution}\n\n{boxed}"]
    read = [(form, _extract(own, form)) for form in forms]
    for form, extracted in read:
        if extracted is not None and extracted.strip() == answer:
            return form
    for form, extracted in read:
        if extracted is not None and grade_answer(own, extracted, answer) is Verdict.EQUIVALENT:
            return form
    raise ValueError(
        f"{task.name}: no reply built from the reference of {problem.id!r} ({answer[:60]!r}) "
        "is graded right by the task, so there is nothing right to train on"
    )


def _extract(task: Task, text: str) -> str | None:
    try:
        return task.extract_answer(text)
    except (ValueError, TypeError):  # a form this task cannot read is not its form
        return None


def training_records(task: Task, problems: Sequence[Problem]) -> list[dict[str, Any]]:
    """One chat conversation per problem: its question prompt, the graded-right reply."""
    from mafl_graph.tasks.base import task_for

    return [
        {
            "messages": [
                {"role": "user", "content": task_for(task, p).question_prompt(p)},
                {"role": "assistant", "content": reference_reply(task, p), "weight": 1},
            ]
        }
        for p in problems
    ]


def tune_configs(
    methods: Sequence[str],
    *,
    epochs: float,
    max_steps: int | None,
    batch_size: int,
    learning_rates: Mapping[str, float],
    lora_r: int,
    svf_layers: Sequence[int] | None,
    dtype: str,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Each tuned method's tuner config, as JSON: the same epochs or steps, batch size, seed
    and dtype for all, each method's own learning rate (and LoRA's rank, SVF's layers)."""
    from mafl_graph.finetune.tuners.registry import tuner_class

    configs = {}
    for method in methods:
        backend, own = BACKENDS[method]
        shared = {
            "epochs": epochs,
            "max_steps": max_steps,
            "batch_size": batch_size,
            "learning_rate": learning_rates[method],
            "seed": seed,
            "dtype": dtype,
            **own,
        }
        if method == "lora":
            shared.update(lora_r=lora_r, lora_alpha=2 * lora_r)
        if method == "svf":
            shared["layers"] = None if svf_layers is None else tuple(svf_layers)
        config = tuner_class(backend).config_type(**shared)
        configs[method] = json.loads(json.dumps(dataclasses.asdict(config)))
    return configs


def compare_tuning(
    domains: Sequence[str],
    run_dir: str | Path,
    *,
    methods: Sequence[str] = METHODS,
    model: str = "smollm2",
    n_train: int = 100,
    n_test: int = 100,
    epochs: float = 2.0,
    max_steps: int | None = None,
    batch_size: int = 8,
    learning_rates: Mapping[str, float] | None = None,
    lora_r: int = 16,
    svf_layers: Sequence[int] | None = None,
    max_new_tokens: int = 256,
    dtype: str = "float32",
    seed: int = 0,
    data_dir: str | Path | None = None,
    concurrency: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """Tune ``model`` with each of ``methods`` on each domain's same ``n_train`` conversations
    and grade every model greedily on the domain's first ``n_test`` test problems; resume the
    run in ``run_dir`` if there is one (with the same settings).

    ``domains``: specs ``[label=]task[:module]``. ``methods``: among base, svf, lora, full;
    the base is graded in any case, as every difference is against it. ``learning_rates``:
    per method, over :data:`LEARNING_RATES`. ``svf_layers``: the layers whose MLP matrices get
    z vectors (None: every layer). Every bad input is refused before anything is written.
    Returns (and writes to ``svf_compare.json``) per domain and method the accuracy ± SE, the
    paired difference to the base, the trainable parameters, the training time, the peak
    memory and the bytes on disk.
    """
    # Imported here, not at the top: each training subprocess imports this module and
    # needs none of the evaluation's modules.
    from mafl_graph.svf.runs import Evaluations, local_model_path, paired_difference

    tuned = _check_methods(methods)
    rates = _check_settings(
        learning_rates or {},
        n_train=n_train,
        n_test=n_test,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        lora_r=lora_r,
        max_steps=max_steps,
        epochs=epochs,
        dtype=dtype,
    )
    model_path = local_model_path(model)
    if "svf" in tuned and svf_layers is not None:
        _check_layers(model_path, svf_layers)
    if not domains:
        raise ValueError("name at least one domain, e.g. --domain arithmetic")
    parsed = [parse_domain(spec, seed=seed, data_dir=data_dir) for spec in domains]
    labels = [d.label for d in parsed]
    if twice := sorted({label for label in labels if labels.count(label) > 1}):
        raise ValueError(f"domain {twice[0]!r} is named twice; give each domain its own label")
    configs = tune_configs(
        tuned,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        learning_rates=rates,
        lora_r=lora_r,
        svf_layers=svf_layers,
        dtype=dtype,
        seed=seed,
    )
    data = {d.label: _problems(d, n_train, n_test) for d in parsed}
    records = {d.label: training_records(d.task, data[d.label][0]) for d in parsed}

    root = Path(run_dir).expanduser()
    settings = {
        "kind": "svf-compare",
        "domains": {d.label: {"spec": d.spec, **d.options} for d in parsed},
        "methods": ["base", *tuned],
        "model": model_path,
        "n_train": n_train,
        "n_test": n_test,
        "max_new_tokens": max_new_tokens,
        "dtype": dtype,
        "seed": seed,
        "tuning": configs,
    }
    from mafl_graph.svf.reinforce import claim_settings

    claim_settings(root / RUN_FILE, settings, what="tuning comparison")
    for d in parsed:
        dataset = _write_dataset(root / "datasets" / f"{d.label}.openai.jsonl", records[d.label])
        for method in tuned:
            if progress and not record_path(root, d.label, method).is_file():
                print(f"training {method} on {d.label}, in a process of its own", file=sys.stderr)
            train_method(root, d.label, method, configs[method], model_path, dataset, progress)

    from mafl_graph.local import LocalChatModel

    greedy = LocalChatModel(
        model_path=model_path, dtype=dtype, temperature=0.0, max_new_tokens=max_new_tokens
    )
    results: dict[str, Any] = {}
    for d in parsed:
        test = data[d.label][1]
        evaluations = Evaluations(root / "evaluations" / d.label)
        base = evaluations.flags("base", greedy, d.task, test, concurrency=concurrency)
        rows: dict[str, Any] = {"base": {"accuracy": _accuracy(base), "trainable_parameters": 0}}
        for method in tuned:
            record = training_record(root, d.label, method)
            flags = evaluations.flags(
                method,
                lambda record=record: _serve(record, dtype, max_new_tokens),  # type: ignore[misc]
                d.task,
                test,
                concurrency=concurrency,
            )
            rows[method] = {
                "accuracy": _accuracy(flags),
                "vs_base": paired_difference(flags, base),
                **{k: record[k] for k in MEASURES},
            }
        results[d.label] = {"task": d.task.name, "test_ids": [p.id for p in test], "rows": rows}
    summary = {**settings, "results": results}
    write_json(root / RESULT_FILE, summary)
    return summary


MEASURES = (
    "trainable_parameters",
    "train_seconds",
    "wall_seconds",
    "seconds_per_step",
    "steps",
    "peak_rss_mb",
    "file_bytes",
    "loss_first",
    "loss_last",
)
"""What each tuned row carries from its training record."""


def _check_methods(methods: Sequence[str]) -> list[str]:
    """The tuned methods among ``methods``, in order; an unknown or repeated one refused."""
    if unknown := [m for m in methods if m not in METHODS]:
        raise ValueError(f"unknown method {unknown[0]!r}; choose among {', '.join(METHODS)}")
    if twice := sorted({m for m in methods if list(methods).count(m) > 1}):
        raise ValueError(f"method {twice[0]!r} is given twice")
    tuned = [m for m in methods if m != "base"]
    if not tuned:
        raise ValueError(
            f"methods {', '.join(methods) or '(none)'} tune nothing; add svf, lora or full"
        )
    return tuned


def _check_settings(
    learning_rates: Mapping[str, float],
    *,
    max_steps: int | None,
    epochs: float,
    dtype: str,
    **counts: int,
) -> dict[str, float]:
    """Each method's learning rate (:data:`LEARNING_RATES` overridden by ``learning_rates``);
    a setting out of range is refused, named with its value."""
    if unknown := sorted(set(learning_rates) - set(TUNED)):
        raise ValueError(
            f"learning rate for unknown method {unknown[0]!r}; set one for {', '.join(TUNED)}"
        )
    rates = {**LEARNING_RATES, **learning_rates}
    if bad := [f"{m}={r}" for m, r in rates.items() if not r > 0]:
        raise ValueError(f"learning rates must be positive; got {', '.join(bad)}")
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1; got {value}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be at least 1 or None; got {max_steps}")
    if not epochs > 0:
        raise ValueError(f"epochs must be positive; got {epochs}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    return rates


def _check_layers(model_path: str, layers: Sequence[int]) -> None:
    """Refuse SVF layers the model does not have (read from its config, no weights loaded)."""
    from mafl_graph.local.loading import prepare_model_dir
    from mafl_graph.svf.decomposition import normalize_layers

    config = json.loads((prepare_model_dir(model_path) / "config.json").read_text())
    normalize_layers(layers, int(config["num_hidden_layers"]))


def _problems(domain: Domain, n_train: int, n_test: int) -> tuple[list[Problem], list[Problem]]:
    train, test = domain.task.load("train", n_train), domain.task.load("test", n_test)
    for split, got, wanted in (("train", train, n_train), ("test", test, n_test)):
        if len(got) < wanted:
            raise ValueError(
                f"domain {domain.label!r} ({domain.spec}) has {len(got)} {split} problems, "
                f"fewer than the {wanted} asked for"
            )
    return train, test


def _write_dataset(path: Path, records: Sequence[Mapping[str, Any]]) -> Path:
    """The training data in ``path``, written once: a resumed run must find the same."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if path.is_file():
        if path.read_text() != text:
            raise ValueError(
                f"{path} differs from the training data these settings give (has the task's "
                "data changed?); start a new run directory"
            )
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


# Training, one subprocess per (domain, method) ------------------------------------------------


def record_path(root: Path, domain: str, method: str) -> Path:
    return root / "training" / domain / f"{method}.json"


def training_record(root: Path, domain: str, method: str) -> dict[str, Any]:
    """What the training of ``method`` on ``domain`` measured; its tuned model must exist."""
    path = record_path(root, domain, method)
    record: dict[str, Any] = json.loads(path.read_text())
    model = Path(record["tuned"]["model"])
    if not model.is_dir():
        raise FileNotFoundError(
            f"{path} records the tuned model {model}, which is gone: delete {path} to train "
            f"{method} on {domain} again"
        )
    return record


def train_method(
    root: Path,
    domain: str,
    method: str,
    config: Mapping[str, Any],
    model_path: str,
    dataset: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``method`` on ``domain``'s dataset in a subprocess, unless its record exists."""
    record = record_path(root, domain, method)
    if record.is_file():
        return training_record(root, domain, method)
    tuner_dir = record.with_suffix("")
    # Without its record, whatever a killed run left is no measurement: start from nothing.
    shutil.rmtree(tuner_dir, ignore_errors=True)
    job = {
        "backend": BACKENDS[method][0],
        "config": dict(config),
        "model": model_path,
        "dataset": str(dataset),
        "tuner_dir": str(tuner_dir),
        "record": str(record),
        "method": method,
        "domain": domain,
        "progress": progress,
        # The wall time runs from here: the interpreter's start and imports are that run's.
        "started": time.time(),
    }
    job_file = record.with_name(f"{method}.job.json")
    write_json(job_file, job)
    error_file = record.with_name(f"{method}.error.txt")
    error_file.unlink(missing_ok=True)
    code = "import sys; from mafl_graph.svf.compare import run_job; run_job(sys.argv[1])"
    done = subprocess.run([sys.executable, "-c", code, str(job_file)], check=False)
    if done.returncode != 0 or not record.is_file():
        why = error_file.read_text().strip() if error_file.is_file() else "no message"
        kind = ValueError if why.startswith("ValueError") else RuntimeError
        raise kind(
            f"training {method} on {domain} failed in its subprocess (exit {done.returncode}): "
            f"{why}"
        )
    job_file.unlink()
    return training_record(root, domain, method)


def run_job(job_file: str | Path) -> None:
    """The subprocess's work: tune, measure, write the record (atomically, last)."""
    job = json.loads(Path(job_file).read_text())
    record = Path(job["record"])
    try:
        _run_job(job, record)
    except BaseException as exc:
        record.with_name(f"{job['method']}.error.txt").write_text(
            f"{type(exc).__name__}: {' '.join(str(exc).split())}\n"
        )
        raise


def _run_job(job: Mapping[str, Any], record: Path) -> None:
    from mafl_graph.finetune.tuners.base import config_from_record
    from mafl_graph.finetune.tuners.local import ADAPTER_METRICS
    from mafl_graph.finetune.tuners.registry import tuner_class

    cls = tuner_class(job["backend"])
    config = config_from_record(cls.config_type, job["config"])
    tuner = cls(job["tuner_dir"], model=job["model"], config=config, progress=job["progress"])  # type: ignore[call-arg]
    tuned = tuner.tune(_AGENT, _ROLE, job["dataset"], job["model"])
    wall = time.time() - job["started"]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KB
    out = Path(tuned.model)
    metrics = json.loads((out / ADAPTER_METRICS).read_text())
    write_json(
        record,
        {
            "method": job["method"],
            "domain": job["domain"],
            "backend": job["backend"],
            "tuned": tuned.as_dict(),
            "trainable_parameters": saved_parameters(out),
            "train_seconds": metrics["seconds"],
            "wall_seconds": wall,
            "seconds_per_step": metrics["seconds_per_step"],
            "steps": metrics["steps"],
            "examples": metrics["examples"],
            "peak_rss_mb": peak_mb,
            "file_bytes": directory_bytes(out),
            "loss_first": metrics["loss_first"],
            "loss_last": metrics["loss_last"],
        },
    )


def saved_parameters(directory: Path) -> int:
    """The elements of every tensor in ``directory``'s safetensors files: what the run trained
    (a LoRA adapter's A and B, an SVF expert's z, a fully tuned model's every weight, a tied
    one once), read from the files' headers."""
    total = 0
    files = sorted(directory.rglob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory} holds no safetensors file: no trained weights")
    for path in files:
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for dim in entry["shape"]:
                    count *= int(dim)
                total += count
    return total


def directory_bytes(directory: Path) -> int:
    """The bytes of every file under ``directory``."""
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def _serve(record: Mapping[str, Any], dtype: str, max_new_tokens: int) -> Any:
    from mafl_graph.finetune.tuners.base import TunedModel

    tuned = TunedModel.from_dict(record["tuned"])
    return tuned.chat_model(temperature=0.0, max_new_tokens=max_new_tokens, dtype=dtype)


def _accuracy(flags: Sequence[bool | None]) -> dict[str, Any]:
    from mafl_graph.svf.runs import accuracy_of

    return accuracy_of(flags).as_dict()


# The report --------------------------------------------------------------------------------

_LABELS = {
    "base": "base",
    "svf": "SVF (z vectors)",
    "lora": "LoRA",
    "full": "full fine-tuning",
}


def compare_rows(summary: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per domain and method: accuracy, against the base, and the costs."""
    from mafl_graph.svf.report import difference, pct

    rows = []
    for domain, result in summary["results"].items():
        for method, row in result["rows"].items():
            tuned = method != "base"
            rows.append(
                {
                    "domain": domain,
                    "method": _LABELS.get(method, method),
                    "accuracy": pct(row["accuracy"]),
                    "vs base": difference(row["vs_base"]) if tuned else "",
                    "trainable params": f"{row['trainable_parameters']:,}",
                    "train time": (
                        f"{row['train_seconds']:.1f} s ({_count(row['steps'], 'step')}; "
                        f"wall {row['wall_seconds']:.0f} s)"
                        if tuned
                        else ""
                    ),
                    "peak memory": f"{row['peak_rss_mb'] / 1024:.2f} GiB" if tuned else "",
                    "file size": _size(row["file_bytes"]) if tuned else "",
                }
            )
    return rows


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def write_compare_report(run_dir: Path) -> tuple[Path, Table]:
    """``report.md`` of a ``mafl svf compare`` run directory; its console table."""
    from mafl_graph.svf.report import markdown, publish, read_summary

    run_dir = Path(run_dir)
    summary = read_summary(run_dir, RESULT_FILE, "mafl svf compare")
    rows = compare_rows(summary)
    title = f"Base, SVF, LoRA and full fine-tuning · {run_dir}"
    tuning = summary["tuning"]
    rates = ", ".join(f"{m} {c['learning_rate']:g}" for m, c in tuning.items())
    any_config = next(iter(tuning.values()))
    steps = (
        _count(any_config["max_steps"], "step")
        if any_config["max_steps"]
        else f"{any_config['epochs']:g} epochs"
    )
    text = [
        f"# {title}\n",
        f"Model {summary['model']} ({summary['dtype']}). Every method tunes on the same "
        f"{summary['n_train']} conversations per domain (the task's question, answered by "
        "its reference in the form its grader reads), for "
        f"{steps} of {any_config['batch_size']} examples; learning rates: {rates}. "
        f"Accuracy: greedy replies of up to {summary['max_new_tokens']} new tokens, on "
        f"{summary['n_test']} held-out test problems per domain, ± "
        "standard error; 'vs base': the paired per-problem difference ± its standard error. "
        "Trainable parameters: the elements of the tensors the run saved. Train time: the "
        "optimiser steps (wall: the whole subprocess, loading and saving included). Peak "
        "memory: the peak resident set of that training's own subprocess. File size: what "
        "it wrote.\n",
        markdown(rows),
    ]
    return publish(run_dir, title, text, rows)
