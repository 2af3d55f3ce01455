"""An experts run directory: the corpus, each method's piles, its experts and their measures.

    <run>/experts_run.json           what made the corpus (task, split, n, seed, token budget)
    <run>/corpus.jsonl, test.jsonl   the documents clustered, and the held-out ones
    <run>/clusters/<method>/         result.json (+ MC-EM's assignments and checkpoint,
                                     union-find's journal)
    <run>/experts/<method>/          the tuner's run (datasets, ledgers, adapters), experts.json
    <run>/specialisation/<method>.json   perplexity (and accuracy) per expert and domain
    <run>/report.md, report.json, composition.png

Every step skips what its file already records, so a rerun of any command resumes: a method
clustered is not clustered again, a pile tuned is not tuned again, nothing paid twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mafl_graph.experts.clustering import METHODS, ClusterResult, read_result, write_result
from mafl_graph.experts.corpus import Corpus, TooLong, build_corpus, check_k
from mafl_graph.rundir import prepare_run_dir, read_settings, write_json

MARKER = "experts_run.json"
"""The file that marks an experts run directory (and holds what made its corpus)."""


@dataclass(frozen=True)
class ExpertsLayout:
    """Every path of an experts run directory."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    @property
    def corpus(self) -> Path:
        return self.root / "corpus.jsonl"

    @property
    def test(self) -> Path:
        return self.root / "test.jsonl"

    def cluster_dir(self, method: str) -> Path:
        return self.root / "clusters" / method

    def result(self, method: str) -> Path:
        return self.cluster_dir(method) / "result.json"

    def experts_dir(self, method: str) -> Path:
        return self.root / "experts" / method

    def experts_record(self, method: str) -> Path:
        return self.experts_dir(method) / "experts.json"

    def specialisation(self, method: str) -> Path:
        return self.root / "specialisation" / f"{method}.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def figure(self) -> Path:
        return self.root / "composition.png"


@dataclass(frozen=True)
class CorpusSettings:
    """What makes an experts run's corpus; a rerun with other settings is refused."""

    task: str = "mixed"
    task_options: Mapping[str, Any] | None = None
    split: str = "train"
    n: int = 240
    test_n: int = 60
    seed: int = 0
    model: str = "smollm2"
    max_tokens: int | None = 512
    too_long: TooLong = "truncate"

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be at least 1 (the corpus would be empty); got {self.n}")
        if self.test_n < 0:
            raise ValueError(f"test_n must not be negative; got {self.test_n}")


def prepare_corpus(run_dir: str | Path, settings: CorpusSettings) -> Corpus:
    """The run's corpus (and held-out documents), made once and read back after.

    The corpus is built before anything is written, so a refused one (too long, too few
    problems) leaves no trace and the same directory takes other settings.
    """
    layout = ExpertsLayout(run_dir)
    record = {"kind": "experts", **asdict(settings)}
    if layout.marker.is_file():
        prepare_run_dir(layout.root, record)  # refuses other settings
        return Corpus.load(layout.corpus)
    task = build_task(settings)
    tokenizer = None
    if settings.max_tokens is not None:
        from mafl_graph.local.loading import load_tokenizer, prepare_model_dir

        tokenizer = load_tokenizer(prepare_model_dir(settings.model))
    options = {"task": task, "tokenizer": tokenizer, "max_tokens": settings.max_tokens}
    corpus = build_corpus(
        task.load(settings.split, settings.n), **options, too_long=settings.too_long
    )
    held_out = None
    if settings.test_n:
        split = "test" if settings.split != "test" else "train"
        held_out = build_corpus(task.load(split, settings.test_n), **options)
    prepare_run_dir(layout.root, record)
    if held_out is not None:
        held_out.save(layout.test)
    corpus.save(layout.corpus)
    write_json(layout.marker, record)  # last: its presence says the corpus is complete
    return corpus


def build_task(settings: CorpusSettings | Mapping[str, Any]) -> Any:
    """The task the corpus was drawn from, rebuilt from its settings."""
    from mafl_graph.config import TaskOptions

    if isinstance(settings, CorpusSettings):
        settings = asdict(settings)
    options = TaskOptions.from_settings(settings["task"], settings.get("task_options") or {})
    task, _ = options.build(seed=settings.get("seed", 0))
    return task


def load_run(run_dir: str | Path) -> tuple[ExpertsLayout, dict[str, Any], Corpus]:
    """The layout, corpus settings and corpus of an existing experts run."""
    layout = ExpertsLayout(run_dir)
    if not layout.marker.is_file():
        raise FileNotFoundError(
            f"{layout.root} is not an experts run (no {MARKER}); make the corpus first with "
            "`mafl experts cluster`"
        )
    settings = read_settings(layout.root / "manifest.json")
    return layout, settings, Corpus.load(layout.corpus)


def cluster(
    run_dir: str | Path,
    method: str,
    *,
    k: int,
    seed: int = 0,
    mc_em: Any = None,
    union_find: Any = None,
    chat_model: Any = None,
    chat_model_name: str = "",
    progress: bool = True,
) -> ClusterResult:
    """Cluster the run's corpus with ``method`` (one of :data:`METHODS`) into ``k`` piles.

    A method already clustered is read back (and must have the same k); MC-EM and union-find
    resume from their own journals. ``mc_em``/``union_find``: their configs (k is set here);
    ``chat_model``: union-find's model.
    """
    from dataclasses import replace

    if method not in METHODS:
        raise ValueError(
            f"unknown clustering method {method!r}; choose one of {', '.join(METHODS)}"
        )
    layout, _, corpus = load_run(run_dir)
    path = layout.result(method)
    if path.is_file():
        done = read_result(path)
        if done.k != k and method not in ("single", "oracle"):
            raise ValueError(
                f"{path} holds {method} with k={done.k}, not k={k}; use another run directory"
            )
        return done
    out = layout.cluster_dir(method)
    started = time.perf_counter()
    if method == "single":
        from mafl_graph.experts.baselines import single_pile

        result = single_pile(corpus)
    elif method == "oracle":
        from mafl_graph.experts.baselines import oracle_clusters

        result = oracle_clusters(corpus, k)
    elif method == "random":
        from mafl_graph.experts.baselines import random_clusters

        result = random_clusters(corpus, k, seed=seed)
    elif method == "kmeans":
        from mafl_graph.experts.baselines import kmeans_clusters

        result = kmeans_clusters(corpus, k, seed=seed)
    elif method == "mc-em":
        from mafl_graph.experts.mc_em import MCEMConfig, mc_em_clusters

        check_k(k, len(corpus))
        config = replace(mc_em or MCEMConfig(), k=k)
        result = mc_em_clusters(corpus, out, config, progress=progress)
    else:
        from mafl_graph.experts.union_find import UnionFindConfig, union_find_clusters

        check_k(k, len(corpus))
        if chat_model is None:
            raise ValueError("llm-union-find needs a chat model (--model, e.g. local:smollm2)")
        config = replace(union_find or UnionFindConfig(), k=k)
        result = union_find_clusters(
            corpus, chat_model, out, config, model_name=chat_model_name, progress=progress
        )
    if not result.cost.seconds:
        from dataclasses import replace as replaced

        result = replaced(result, cost=replaced(result.cost, seconds=time.perf_counter() - started))
    write_result(path, result)
    return result


def train(
    run_dir: str | Path,
    method: str,
    *,
    backend: str = "local",
    options: Any = None,
    model: str = "",
    seed: int = 0,
) -> list[Any]:
    """One expert per pile of ``method``'s clustering; recorded in ``experts.json``."""
    from mafl_graph.experts.train import train_experts

    layout, settings, corpus = load_run(run_dir)
    result = read_result(layout.result(method))
    experts = train_experts(
        corpus,
        result,
        build_task(settings),
        layout.experts_dir(method),
        backend=backend,
        options=options,
        model=model,
        seed=seed,
    )
    record = [
        {"pile": e.pile, "documents": e.documents, "tuned": e.tuned.as_dict() if e.tuned else None}
        for e in experts
    ]
    write_json(layout.experts_record(method), record)
    return experts


def trained_experts(run_dir: str | Path, method: str) -> list[Any]:
    """The experts ``train`` recorded for ``method``."""
    from mafl_graph.experts.train import TrainedExpert
    from mafl_graph.finetune.tuners.base import TunedModel

    path = ExpertsLayout(run_dir).experts_record(method)
    if not path.is_file():
        raise FileNotFoundError(f"no experts at {path}; run `mafl experts train --method {method}`")
    return [
        TrainedExpert(
            r["pile"], r["documents"], TunedModel.from_dict(r["tuned"]) if r["tuned"] else None
        )
        for r in json.loads(path.read_text())
    ]


def evaluate(
    run_dir: str | Path,
    methods: list[str],
    *,
    per_domain: int | None = None,
    accuracy: bool = False,
    max_new_tokens: int = 256,
    concurrency: int = 16,
) -> dict[str, Any]:
    """Perplexity (and with ``accuracy``, greedy accuracy) of every trained expert of
    ``methods``, the untuned base, on the held-out documents of each domain.

    Written per method to ``specialisation/<method>.json``; a method measured with the same
    settings is read back.
    """
    from mafl_graph.experts.specialisation import accuracy_matrix, perplexity_matrix
    from mafl_graph.local import LocalChatModel

    layout, settings, _ = load_run(run_dir)
    if not layout.test.is_file():
        raise FileNotFoundError(f"no held-out documents in {layout.test} (the corpus had test_n=0)")
    test = Corpus.load(layout.test)
    task = build_task(settings)
    wanted = {"per_domain": per_domain, "accuracy": accuracy, "max_new_tokens": max_new_tokens}
    out: dict[str, Any] = {}
    for method in ["base", *methods]:
        path = layout.specialisation(method)
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("settings") == wanted:
                out[method] = saved
                continue
        if method == "base":
            adapters: dict[str, str | None] = {"base": None}
        else:
            adapters = {
                f"{method}/expert{e.pile}": e.tuned.model
                for e in trained_experts(run_dir, method)
                if e.tuned is not None
            }
        started = time.perf_counter()
        record: dict[str, Any] = {
            "settings": wanted,
            "perplexity": perplexity_matrix(
                adapters, test, task, per_domain=per_domain, model_path=settings["model"]
            ),
        }
        if accuracy:
            chats = {
                name: LocalChatModel(
                    model_path=settings["model"],
                    adapter=adapter,
                    temperature=0.0,
                    max_new_tokens=max_new_tokens,
                )
                for name, adapter in adapters.items()
            }
            record["accuracy"] = accuracy_matrix(
                chats, test, task, per_domain=per_domain, concurrency=concurrency
            )
        record["seconds"] = time.perf_counter() - started
        write_json(path, record)
        out[method] = record
    return out
