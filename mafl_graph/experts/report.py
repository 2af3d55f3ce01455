"""The report of an experts run: cluster quality, cost and specialisation per method, and the
composition of MC-EM's experts as the run went (``composition.png``).

``write_experts_report(run_dir)`` has the signature of the writers ``mafl report`` dispatches
to by marker file (:func:`mafl_graph.report.register_run_report`, marker
:data:`~mafl_graph.experts.runs.MARKER`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.table import Table

from mafl_graph.experts.clustering import METHODS, ClusterResult, read_result
from mafl_graph.experts.metrics import cluster_quality, composition_table
from mafl_graph.experts.runs import ExpertsLayout, load_run

if TYPE_CHECKING:
    from matplotlib.figure import Figure

WINDOWS = 10
"""Windows per epoch in the composition figure."""


def quality_rows(
    results: Mapping[str, ClusterResult], domains: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per method: NMI, ARI, purity, pile sizes and cost."""
    rows = []
    for method, result in results.items():
        quality = cluster_quality(result.labels, domains)
        cost = result.cost
        rows.append(
            {
                "method": method,
                "k": result.k,
                "nmi": quality["nmi"],
                "ari": quality["ari"],
                "purity": quality["purity"],
                "sizes": result.sizes,
                "model_calls": cost.model_calls,
                "tokens": cost.input_tokens + cost.output_tokens,
                "training_steps": cost.training_steps,
                "seconds": cost.seconds,
                "composition": quality["composition"],
                "details": dict(result.details),
            }
        )
    return rows


def _markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| method | k | NMI | ARI | purity | pile sizes | model calls | tokens | training steps "
        "| wall time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sizes = " / ".join(str(s) for s in r["sizes"])
        lines.append(
            f"| {r['method']} | {r['k']} | {r['nmi']:.3f} | {r['ari']:.3f} | {r['purity']:.3f} "
            f"| {sizes} | {r['model_calls']} | {r['tokens']} | {r['training_steps']} "
            f"| {r['seconds']:.1f} s |"
        )
    return "\n".join(lines)


def console_table(rows: Sequence[Mapping[str, Any]], title: str = "") -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAVY)
    for column in ("method", "k", "NMI", "ARI", "purity", "sizes", "calls", "time"):
        table.add_column(column, justify="left" if column in ("method", "sizes") else "right")
    for r in rows:
        table.add_row(
            r["method"],
            str(r["k"]),
            f"{r['nmi']:.3f}",
            f"{r['ari']:.3f}",
            f"{r['purity']:.3f}",
            "/".join(str(s) for s in r["sizes"]),
            str(r["model_calls"]),
            f"{r['seconds']:.0f} s",
        )
    return table


def write_experts_report(run_dir: str | Path) -> tuple[Path, Table]:
    """report.md, report.json and composition.png of an experts run; the console table."""
    from mafl_graph.experts.specialisation import matrix_table

    layout, _, corpus = load_run(run_dir)
    domains = corpus.domains
    results = {m: read_result(layout.result(m)) for m in METHODS if layout.result(m).is_file()}
    if not results:
        raise FileNotFoundError(
            f"nothing clustered in {layout.root} yet; run `mafl experts cluster` first"
        )
    rows = quality_rows(results, domains)
    names = sorted(set(domains))
    text = [
        f"# Experts: {layout.root}\n",
        f"{len(corpus)} documents, domains {', '.join(names)} "
        f"({', '.join(f'{d}: {domains.count(d)}' for d in names)}); "
        f"{len(corpus.truncated)} truncated to the token budget.\n",
        "## Cluster quality and cost\n",
        "NMI and ARI against the hidden domains (1: the domains exactly; about 0: a random "
        "split); purity: share of documents in their pile's majority domain. Tokens: model "
        "calls' input + output (union-find), or tokens scored by forward passes (MC-EM).\n",
        _markdown(rows) + "\n",
        "## Pile composition\n",
    ]
    for r in rows:
        text += [f"**{r['method']}**\n", composition_table(r["composition"], names) + "\n"]
    specialisation = _specialisation(layout)
    if specialisation:
        text += [
            "## Specialisation on held-out problems\n",
            "Perplexity of the reference reply under each expert (lower is better; the best "
            "of each column in bold); `single/expert0` is one model tuned on the whole corpus, "
            "`base` the untuned model.\n",
            matrix_table(specialisation["perplexity"]) + "\n",
        ]
        ratios = best_expert_ratios(specialisation["perplexity"])
        if ratios:
            text += [
                "Each method's best expert on each domain, as a fraction of the single model's "
                "perplexity (below 1: some expert of that method beats the single model there; "
                "choosing the best expert per domain uses the domain labels):\n",
                matrix_table(ratios) + "\n",
            ]
        if specialisation.get("accuracy"):
            text += [
                "Greedy accuracy:\n",
                matrix_table(specialisation["accuracy"], percent=True, best="max") + "\n",
            ]
    figure = composition_figure(layout.cluster_dir("mc-em"), domains, corpus.ids)
    if figure is not None:
        figure.savefig(layout.figure, dpi=120, bbox_inches="tight")
        text.append(f"![MC-EM composition]({layout.figure.name})\n")
    layout.report.write_text("\n".join(text))
    report_json = {"quality": rows, "specialisation": specialisation}
    layout.report.with_suffix(".json").write_text(json.dumps(report_json, indent=2) + "\n")
    return layout.report, console_table(rows, title=str(layout.root))


def best_expert_ratios(
    perplexity: Mapping[str, Mapping[str, float]], single: str = "single/expert0"
) -> dict[str, dict[str, float]]:
    """``{method: {domain: min over its experts of ppl / the single model's ppl}}``."""
    if single not in perplexity:
        return {}
    methods: dict[str, list[str]] = {}
    for name in perplexity:
        method, sep, _ = name.partition("/")
        if sep and name != single:
            methods.setdefault(method, []).append(name)
    return {
        method: {
            domain: min(perplexity[e][domain] for e in experts) / value
            for domain, value in perplexity[single].items()
        }
        for method, experts in methods.items()
    }


def _specialisation(layout: ExpertsLayout) -> dict[str, dict[str, dict[str, float]]]:
    merged: dict[str, dict[str, dict[str, float]]] = {}
    directory = layout.root / "specialisation"
    if not directory.is_dir():
        return merged
    order = ["base", *METHODS]
    files = sorted(
        directory.glob("*.json"), key=lambda p: order.index(p.stem) if p.stem in order else 99
    )
    for path in files:
        record = json.loads(path.read_text())
        for key in ("perplexity", "accuracy"):
            merged.setdefault(key, {}).update(record.get(key, {}))
    return merged


def composition_figure(
    mc_em_dir: Path, domains: Sequence[str], ids: Sequence[str]
) -> Figure | None:
    """MC-EM's draws as the run went: per expert, the share of each domain among the
    documents it drew in each window of the run (``WINDOWS`` per epoch); None before any."""
    from mafl_graph.experts.mc_em import read_assignments

    records = read_assignments(mc_em_dir)
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domain_of = dict(zip(ids, domains, strict=True))
    names = sorted(set(domains))
    k = 1 + max(r["expert"] for r in records)
    n = len(ids)
    width = max(1, n // WINDOWS)
    epochs = 1 + max(r["epoch"] for r in records)
    windows = [(r["epoch"] * n + r["position"]) // width for r in records]
    count = 1 + max(windows)
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k, 3), sharey=True, squeeze=False)
    for expert, ax in enumerate(axes[0]):
        shares = {d: [0.0] * count for d in names}
        for r, w in zip(records, windows, strict=True):
            if r["expert"] == expert:
                shares[domain_of[r["id"]]][w] += 1
        totals = [sum(shares[d][w] for d in names) for w in range(count)]
        x = [(w + 0.5) * width / n for w in range(count)]
        stacked = [
            [shares[d][w] / totals[w] if totals[w] else 0.0 for w in range(count)] for d in names
        ]
        ax.stackplot(x, stacked, labels=names, alpha=0.85)
        for e in range(1, epochs):
            ax.axvline(e, color="black", linewidth=0.8)
        ax.set_title(f"expert {expert} ({sum(1 for r in records if r['expert'] == expert)} draws)")
        ax.set_xlabel("epochs")
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("share of the expert's draws")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    fig.suptitle("MC-EM: domains each expert drew, per window of the run")
    fig.tight_layout()
    return fig
