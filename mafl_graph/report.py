"""Tables and plots of a comparison (``mafl compare``) or a single loop (``mafl loop``).

The table follows the paper's Table 1 (one row per method: its best-known iteration, i.e. the
last one run), plus one row per iteration for the methods that iterate; the plots follow its
Fig. 1 (accuracy per iteration, multiagent vs single-agent fine-tuning) and the diversity
measures per iteration.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from mafl_graph.methods import Method, get_method, method_names
from mafl_graph.rundir import RunLayout


def load_metrics(run_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """``{method: metrics}`` of a comparison directory, or ``{"loop": …}`` of one loop."""
    layout = RunLayout(run_dir)
    if layout.metrics.is_file():
        return {"loop": _read(layout.metrics)}
    runs = {name: layout.method(name).metrics for name in method_names()}
    found = {name: _read(path) for name, path in runs.items() if path.is_file()}
    if not found:
        raise FileNotFoundError(
            f"No {layout.metrics.name} in {layout.root} or its method subdirectories."
        )
    return found


def _method(name: str) -> Method | None:
    """The registered method of a metrics key (others name a loop, a sweep point, …)."""
    return get_method(name) if name in method_names() else None


def _label(name: str) -> str:
    method = _method(name)
    return method.label if method is not None and method.label else name


def _iterates(name: str) -> bool:
    """Whether the run is a loop: its iteration 0 is the untuned debate, and it has curves."""
    method = _method(name)
    return method is None or method.runs_as_loop


def _read(path: Path) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads(path.read_text())
    return records


def _pct(acc: Mapping[str, Any] | None) -> str:
    if not acc or not acc.get("n"):
        return "–"
    undecided = f" ({acc['undecided']} undecided)" if acc.get("undecided") else ""
    return f"{100 * acc['mean']:.1f} ± {100 * acc['stderr']:.1f}{undecided}"


def _num(value: Any, digits: int = 3) -> str:
    # Adding 0.0 turns the -0.0 that rounding a tiny negative gives into 0.0 ("-0.000").
    return "–" if value is None else f"{round(value, digits) + 0.0:.{digits}f}"


def rows(metrics: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, str]]:
    """One row per (method, evaluated iteration), in the table's column order."""
    out, bases = [], set()
    for method, records in metrics.items():
        for record in records:
            ev = record.get("eval")
            if not ev:
                continue
            if record["iteration"] == 0:  # methods copy the shared untuned debate: show it once
                base = json.dumps([ev.get("accuracy"), ev.get("round_accuracy"), ev.get("tokens")])
                if base in bases:
                    continue
                bases.add(base)
            rounds = ev.get("round_accuracy") or [None]
            diversity = record.get("diversity") or {}
            train = record.get("train") or {}
            tuning = record.get("tuning") or {}
            sizes = (record.get("datasets") or {}).get("datasets", {})
            out.append(
                {
                    "method": "base (untuned debate)"
                    if record["iteration"] == 0 and _iterates(method)
                    else _label(method),
                    "iteration": str(record["iteration"]),
                    "single agent (round 1)": _pct(rounds[0]),
                    "final answer (vote)": _pct(ev.get("accuracy")),
                    "consensus": f"{100 * ev.get('consensus', 0):.0f}%",
                    "embedding dissim.": _num(diversity.get("embedding_dissimilarity")),
                    "NLL": _num(diversity.get("likelihood_nll"), 2),
                    "KL": _num(diversity.get("kl")),
                    "train examples": str(sum(d["examples"] for d in sizes.values()))
                    if sizes
                    else "–",
                    "eval tokens": f"{ev.get('tokens', 0):,}",
                    "eval time": f"{ev.get('seconds', 0) / 60:.1f} min",
                    "train+tune time": _minutes(train, tuning) if train else "–",
                }
            )
    return out


def _minutes(*steps: Mapping[str, Any]) -> str:
    return f"{sum(s.get('seconds', 0) for s in steps) / 60:.1f} min"


def markdown_table(table_rows: Sequence[Mapping[str, str]]) -> str:
    if not table_rows:
        return "(no finished evaluation yet)\n"
    columns = list(table_rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in table_rows]
    return "\n".join(lines) + "\n"


def iteration_table(records: Sequence[Mapping[str, Any]], title: str = "") -> Table:
    """A rich table of one loop's iterations, for the console."""
    table = Table(title=title)
    found = rows({"loop": records})
    for column in found[0] if found else ["iteration"]:
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in found:
        table.add_row(*row.values())
    return table


def write_report(run_dir: str | Path) -> Path:
    """The report (markdown, with its metrics as JSON beside it) and the accuracy and
    diversity figures, in ``run_dir``; returns the report's path."""
    layout = RunLayout(run_dir)
    metrics = load_metrics(layout.root)
    table_rows = rows(metrics)
    plots = _plots(metrics, layout)
    text = [
        f"# Results: {layout.root}\n",
        "Accuracy in % ± standard error over test problems. 'single agent (round 1)' is the "
        "mean accuracy of the agents' independent first answers; 'final answer (vote)' is the "
        "majority of the last round. Diversity: embedding dissimilarity of round-1 answers, "
        "NLL of one agent's answer under another's model (nats/token), KL between agents' "
        "next-token distributions (nats/token).\n",
        markdown_table(table_rows),
        *[f"![{name}]({name})\n" for name in plots],
    ]
    layout.report.write_text("\n".join(text))
    layout.report.with_suffix(".json").write_text(json.dumps(metrics, indent=2) + "\n")
    return layout.report


def _plots(metrics: Mapping[str, Sequence[Mapping[str, Any]]], layout: RunLayout) -> list[str]:
    """The figures, written beside the report; returns their names."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the table is the result; plots need the `analysis` extra
        return []
    curves = {m: r for m, r in metrics.items() if _iterates(m)}
    written = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, title in (
        (axes[0], "final", "final answer (vote)"),
        (axes[1], "first", "single agent (round 1)"),
    ):
        for method, records in curves.items():
            points = [(r["iteration"], _acc(r["eval"], key)) for r in records if r.get("eval")]
            if not points:
                continue
            xs = [p[0] for p in points]
            ax.errorbar(
                xs,
                [100 * p[1]["mean"] for p in points],
                yerr=[100 * p[1]["stderr"] for p in points],
                marker="o",
                capsize=3,
                label=_label(method),
            )
        ax.set_title(title)
        ax.set_xlabel("fine-tuning iteration")
        ax.set_xticks(sorted({r["iteration"] for rs in curves.values() for r in rs}))
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(layout.figure("accuracy"), dpi=110)
    plt.close(fig)
    written.append(layout.figure("accuracy").name)
    measures = ("consensus", "embedding_dissimilarity", "likelihood_nll", "kl")
    if any(r.get("diversity") for rs in curves.values() for r in rs):
        fig, axes = plt.subplots(1, len(measures), figsize=(14, 3.5))
        for ax, name in zip(axes, measures, strict=True):
            for method, records in curves.items():
                points = [
                    (r["iteration"], r["diversity"][name])
                    for r in records
                    if r.get("diversity") and r["diversity"].get(name) is not None
                ]
                if points:
                    ax.plot(*zip(*points, strict=True), marker="o", label=_label(method))
            ax.set_title(name.replace("_", " "))
            ax.set_xlabel("iteration")
        axes[0].legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(layout.figure("diversity"), dpi=110)
        plt.close(fig)
        written.append(layout.figure("diversity").name)
    return written


def _acc(evaluation: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    if key == "final":
        return evaluation["accuracy"]  # type: ignore[no-any-return]
    return (evaluation.get("round_accuracy") or [evaluation["accuracy"]])[0]  # type: ignore[no-any-return]
