"""Experts that cooperate, measured side by side on the same problems.

Each *strategy* is a society and a number of rounds, debated with the same graph, the same
grading and the same problems: the untuned base, every single expert, the experts debating
with plain prompts and with evolved ones (:mod:`~mafl_graph.experts.evoprompt`), the token
mixer alone and as debating agents (:mod:`~mafl_graph.experts.mixer`), and the base's
majority vote over as many answers as the debate gives (agents × rounds). Every strategy is
measured on each split (the corpus's ``test`` split by domain, the ``cross-domain`` split
whose problems chain several domains): accuracy ± SE, per domain, paired differences against
the base and the best single expert, model calls, tokens and wall time.

    <run>/cooperate/settings.json          what the measures were made with
    <run>/cooperate/<split>/<strategy>.sqlite   the debates' checkpoints (a rerun resumes)
    <run>/cooperate/<split>/<strategy>.json     per-problem grades, calls, tokens, seconds
    <run>/cooperate/report.md, cooperate.json   the table

A strategy measured with the same settings is read back, never debated again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mafl_graph.rundir import write_json

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from mafl_graph.debate.prompts import DebatePrompts
    from mafl_graph.society import Society
    from mafl_graph.tasks.base import Problem, Task

SPLITS = ("test", "cross-domain")
BEST_SINGLE = "best single expert"


@dataclass(frozen=True)
class CooperateSettings:
    """How the strategies are measured (written next to the results)."""

    method: str = field(default="kmeans", metadata={"help": "whose clustering's experts"})
    n: int = field(default=40, metadata={"help": "problems per split"})
    splits: tuple[str, ...] = field(default=SPLITS, metadata={"help": "splits to measure on"})
    cross_domain: tuple[str, ...] = field(
        default=(), metadata={"help": "DeepMind `_composed` modules of the cross-domain split"}
    )
    rounds: int = field(default=2, metadata={"help": "rounds of each debate"})
    summarize: bool = field(default=False, metadata={"help": "debates use a summarizer"})
    max_new_tokens: int = field(default=128, metadata={"help": "tokens per reply"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature"})
    seed: int = field(default=0, metadata={"help": "sampling seed (agent i gets seed + i)"})
    concurrency: int = field(default=16, metadata={"help": "debates in flight"})

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be at least 1; got {self.n}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1; got {self.rounds}")
        unknown = [s for s in self.splits if s not in SPLITS]
        if unknown or not self.splits:
            raise ValueError(f"unknown split(s) {unknown or '(none)'}; choose among {SPLITS}")


@dataclass(frozen=True)
class Strategy:
    """One row of the table: a society debated for ``rounds`` rounds with ``prompts``."""

    name: str
    society: Society
    rounds: int
    prompts: DebatePrompts | None = None
    note: str = ""
    single_expert: bool = False
    """One expert answering alone: a candidate for the best single expert."""


def strategies(
    experts: Mapping[str, BaseChatModel],
    base: Callable[[int], BaseChatModel],
    settings: CooperateSettings,
    *,
    roles: Sequence[str] | None = None,
    instruction: str = "",
    mixer: Callable[[int], BaseChatModel] | None = None,
) -> list[Strategy]:
    """The strategies to measure. ``experts``: name -> chat model; ``base(i)``: the base model
    with seed offset ``i``; ``roles``/``instruction``: evolved prompts (the ``evolved`` row);
    ``mixer(i)``: the token mixer as a chat model with seed offset ``i``."""
    from mafl_graph.debate.prompts import DebatePrompts
    from mafl_graph.society import Agent, Society

    if not experts:
        raise ValueError("no experts to cooperate: train some with `mafl experts train`")
    k, rounds = len(experts), settings.rounds

    def society(models: Sequence[tuple[str, BaseChatModel]]) -> Society:
        agents = tuple(Agent(name=name, generator=m, critic=m) for name, m in models)
        return Society(agents=agents, summarizer=base(0))

    rows = [Strategy("base", society([("base", base(0))]), 1, note="one answer")]
    rows += [
        Strategy(name, society([(name, m)]), 1, note="one answer", single_expert=True)
        for name, m in experts.items()
    ]
    debate = society(list(experts.items()))
    rows.append(Strategy("experts debate", debate, rounds, note=f"{k} agents × {rounds} rounds"))
    if roles is not None:
        evolved = debate.with_roles(roles)
        prompts = DebatePrompts(instruction=instruction)
        rows.append(Strategy("experts debate, evolved prompts", evolved, rounds, prompts))
    if mixer is not None:
        rows.append(Strategy("mixer", society([("mixer", mixer(0))]), 1, note="one answer"))
        mixers = [(f"mixer{i}", mixer(i)) for i in range(k)]
        rows.append(Strategy("mixer debate", society(mixers), rounds, note=f"{k} mixers"))
    votes = [(f"sample{i}", base(i)) for i in range(k * rounds)]
    rows.append(Strategy("base majority vote", society(votes), 1, note=f"{k * rounds} answers"))
    return rows


def measure(
    strategy: Strategy,
    task: Task,
    problems: Sequence[Problem],
    out_dir: Path,
    settings: CooperateSettings,
) -> dict[str, Any]:
    """``strategy`` on ``problems``: per-problem grades and costs, read back if measured."""
    from mafl_graph.evaluate import evaluate_society

    slug = strategy.name.replace(" ", "-").replace(",", "")
    path = out_dir / f"{slug}.json"
    wanted = {"problems": [p.id for p in problems], "rounds": strategy.rounds}
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("wanted") == wanted:
            return dict(saved)
    evaluation = evaluate_society(
        strategy.society,
        task,
        problems,
        db_path=out_dir / f"{slug}.sqlite",
        run_id=slug,
        rounds=strategy.rounds,
        summarize=settings.summarize and strategy.rounds > 1,
        seed=settings.seed,
        concurrency=settings.concurrency,
        prompts=strategy.prompts,
    )
    record = {
        "wanted": wanted,
        "strategy": strategy.name,
        "note": strategy.note,
        "single_expert": strategy.single_expert,
        "correct": {res.problem_id: bool(res.correct) for res in evaluation.results},
        "failed": evaluation.summary.failed,
        "calls": evaluation.calls,
        "tokens": evaluation.tokens,
        "seconds": evaluation.seconds,
    }
    write_json(path, record)
    return record


def cooperate(
    run_dir: str | Path,
    settings: CooperateSettings,
    rows: Sequence[Strategy],
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure ``rows`` on every split of ``settings`` and write the table (see the module)."""
    from mafl_graph.experts.runs import build_task, load_run

    layout, corpus_settings, _ = load_run(run_dir)
    task = build_task(corpus_settings)
    if settings.cross_domain:
        from dataclasses import replace

        task = replace(task, cross_domain=tuple(settings.cross_domain))
    root = layout.root / "cooperate"
    write_json(root / "settings.json", asdict(settings))
    table: dict[str, Any] = {"settings": asdict(settings), "splits": {}}
    for split in settings.splits:
        problems = task.load(split, settings.n)
        records = {}
        for strategy in rows:
            if progress:
                progress(f"{split}: {strategy.name}")
            records[strategy.name] = measure(strategy, task, problems, root / split, settings)
        table["splits"][split] = summarize(records, problems, task)
    write_json(root / "cooperate.json", table)
    (root / "report.md").write_text(render(table))
    return table


def summarize(
    records: Mapping[str, Mapping[str, Any]], problems: Sequence[Problem], task: Task
) -> dict[str, Any]:
    """Accuracy ± SE, per domain and paired against the base and the best single expert."""
    from mafl_graph.evaluate import accuracy
    from mafl_graph.svf.runs import paired_difference

    ids = [p.id for p in problems]
    domain_of = getattr(task, "domain_of", None)
    domains = {p.id: domain_of(p) if domain_of else task.name for p in problems}
    flags = {name: [r["correct"].get(i, False) for i in ids] for name, r in records.items()}
    singles = [n for n, r in records.items() if r.get("single_expert")]
    best = max(singles, key=lambda n: sum(flags[n]), default=None)
    rows = []
    for name, record in records.items():
        row: dict[str, Any] = {
            "strategy": name,
            "note": record.get("note", ""),
            "accuracy": accuracy(flags[name]).as_dict(),
            "domains": {
                d: accuracy(
                    [f for f, i in zip(flags[name], ids, strict=True) if domains[i] == d]
                ).as_dict()
                for d in sorted(set(domains.values()))
            },
            "calls": record["calls"],
            "tokens": record["tokens"],
            "seconds": record["seconds"],
            "failed": record["failed"],
        }
        if name != "base" and "base" in flags:
            row["vs_base"] = paired_difference(flags[name], flags["base"])
        if best is not None and name != best:
            row["vs_best_single"] = paired_difference(flags[name], flags[best])
        rows.append(row)
    return {"n": len(ids), "best_single": best, "rows": rows}


def _pct(value: Mapping[str, Any]) -> str:
    return f"{100 * value['mean']:.1f} ± {100 * value['stderr']:.1f}"


def render(table: Mapping[str, Any]) -> str:
    """The table as Markdown, one section per split."""
    lines = ["# Experts that cooperate", ""]
    settings = table["settings"]
    lines.append(
        f"Experts of the `{settings['method']}` clustering; {settings['n']} problems per split; "
        f"debates of {settings['rounds']} rounds, {settings['max_new_tokens']} new tokens per "
        f"reply, temperature {settings['temperature']}. Accuracy ± SE in %; paired "
        "differences in points (± SE) on the same problems."
    )
    for split, result in table["splits"].items():
        rows = result["rows"]
        domains = sorted({d for row in rows for d in row["domains"]})
        lines += ["", f"## {split} ({result['n']} problems)", ""]
        best = result["best_single"]
        if best:
            lines.append(f"Best single expert (chosen on these problems): `{best}`.")
            lines.append("")
        head = ["strategy", "accuracy", *domains, "vs base", "vs best single"]
        head += ["calls", "tokens", "time"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for row in rows:
            cells = [
                f"{row['strategy']} ({row['note']})" if row["note"] else row["strategy"],
                _pct(row["accuracy"]),
                *(_pct(row["domains"][d]) if d in row["domains"] else "" for d in domains),
                _pct(row["vs_base"]) if "vs_base" in row else "",
                _pct(row["vs_best_single"]) if "vs_best_single" in row else "",
                str(row["calls"]),
                str(row["tokens"]),
                f"{row['seconds']:.0f} s",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
