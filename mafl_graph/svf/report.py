"""Reports of SVF runs (``mafl report`` on a ``mafl svf ...`` directory): a table for the
console, ``report.md`` with every number, and the learning curve as ``curve.png``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.table import Table

from mafl_graph.rundir import write_json

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT = "report.md"
CURVE = "curve.png"


def pct(acc: Mapping[str, Any]) -> str:
    """``32.0 ± 4.7% (32/100)``."""
    return (
        f"{100 * acc['mean']:.1f} ± {100 * acc['stderr']:.1f}% "
        f"({acc.get('correct', '?')}/{acc['n']})"
    )


def difference(diff: Mapping[str, Any]) -> str:
    """``+6.0 ± 3.1 points (1.9 SE)``: the paired difference and how many standard errors."""
    se = diff["stderr"]
    ratio = f"{diff['mean'] / se:+.1f} SE" if se else "no spread"
    return f"{100 * diff['mean']:+.1f} ± {100 * se:.1f} points ({ratio})"


def train_summary_line(summary: Mapping[str, Any]) -> str:
    """One line: base and expert on the test split, their difference, the best step."""
    return (
        f"{summary['task']}: base {pct(summary['base'])}, expert {pct(summary['expert'])}, "
        f"difference {difference(summary['difference'])}; best step {summary['best_step']} "
        f"(validation {100 * summary['validation_accuracy']:.1f}%), "
        f"{summary['seconds_per_step']:.1f} s/step"
    )


def train_rows(summary: Mapping[str, Any]) -> list[dict[str, str]]:
    return [
        {"model": "base", "test accuracy": pct(summary["base"]), "vs base": ""},
        {
            "model": f"SVF expert (REINFORCE, step {summary['best_step']})",
            "test accuracy": pct(summary["expert"]),
            "vs base": difference(summary["difference"]),
        },
    ]


def markdown(rows: Sequence[Mapping[str, str]]) -> str:
    """A markdown table of ``rows`` (the keys of the first one are the columns)."""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def rich_table(rows: Sequence[Mapping[str, str]], title: str) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*(row.get(c, "") for c in rows[0]))
    return table


def curve_figure(
    curve: Sequence[Mapping[str, Any]],
    title: str,
    base: float | None = None,
    base_validation: float | None = None,
) -> Figure:
    """Validation accuracy (%) at each validation and the mean training reward per step;
    ``base``: the base's test accuracy (%), drawn as a dashed line; ``base_validation``: the
    base's validation accuracy (%), the curve's point at step 0."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 3.6), layout="constrained")
    ax = fig.subplots()
    steps = [e["step"] for e in curve]
    ax.plot(steps, [e["train_reward"] for e in curve], color="0.7", linewidth=1, label="reward")
    ax.set_xlabel("REINFORCE step")
    ax.set_ylabel("mean training reward (−1..1)")
    ax.set_ylim(-1.05, 1.05)
    right = ax.twinx()
    validated = [e for e in curve if e.get("validation_accuracy") is not None]
    start = [] if base_validation is None else [(0, base_validation)]
    points = start + [(e["step"], 100 * e["validation_accuracy"]) for e in validated]
    right.plot(
        [step for step, _ in points],
        [value for _, value in points],
        marker="o",
        color="tab:blue",
        label="validation accuracy",
    )
    if base is not None:
        right.axhline(base, color="tab:blue", linestyle="--", linewidth=1, label="base (test)")
    right.set_ylabel("accuracy (%)")
    right.set_ylim(0, 100)
    fig.legend(loc="outside lower center", ncols=2, frameon=False)
    ax.set_title(title)
    return fig


def read_summary(run_dir: Path, name: str, command: str) -> dict[str, Any]:
    """The result file ``name`` of a run directory, or an error saying how to finish it."""
    import json

    path = run_dir / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir} has no {name} yet: run the same `{command}` command again to finish "
            "(it resumes)"
        )
    return dict(json.loads(path.read_text()))


def publish(
    run_dir: Path, title: str, text: Sequence[str], rows: Sequence[Mapping[str, str]]
) -> tuple[Path, Table]:
    """Write ``report.md`` (``text``) and ``report.json`` (``rows``); the console table."""
    report = run_dir / REPORT
    report.write_text("\n".join(text))
    write_json(run_dir / "report.json", {"rows": list(rows)})
    return report, rich_table(rows, title)


def write_svf_report(run_dir: Path) -> tuple[Path, Table]:
    """``report.md`` (and ``curve.png``) of an SVF run directory; its console table."""
    from mafl_graph.svf.runs import RESULT_FILE

    summary = read_summary(run_dir, RESULT_FILE, "mafl svf train")
    rows = train_rows(summary)
    title = f"SVF REINFORCE on {summary['task']} · {run_dir}"
    text = [
        f"# {title}\n",
        f"Greedy accuracy on {summary['n_test']} held-out test problems ± standard error; "
        "'vs base' is the paired per-problem difference ± its standard error. The expert is "
        f"the step of best accuracy on {summary['n_validation']} validation problems drawn "
        f"from the train split ({summary['n_train']} training problems).\n",
        markdown(rows),
    ]
    if "base_validation" in summary:
        text.append(
            f"The base on the validation problems: {pct(summary['base_validation'])}; the "
            f"expert kept: {100 * summary['validation_accuracy']:.1f}% there.\n"
        )
    if summary.get("curve"):
        base = 100 * summary["base"]["mean"]
        start = summary.get("base_validation")
        curve_figure(
            summary["curve"], title, base, None if start is None else 100 * start["mean"]
        ).savefig(run_dir / CURVE, dpi=120)
        text.append(f"![learning curve]({CURVE})\n")
    return publish(run_dir, title, text, rows)


_ROW_LABELS = {
    "base": "base",
    "adapt-prompt": "self-adaptation: prompt dispatch",
    "adapt-classifier": "self-adaptation: classification expert",
    "adapt-cem": "self-adaptation: few-shot CEM",
}


def adapt_rows(summary: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per model of a self-adaptation run: accuracy, per domain, against the base
    and the best single expert, and how often dispatch routed a problem to its domain."""
    rows = []
    for name, row in summary["rows"].items():
        label = _ROW_LABELS.get(name, f"expert {name}")
        if name == summary["best_expert"]:
            label += " (best single)"
        routing = row.get("routing_accuracy")
        rows.append(
            {
                "model": label,
                "accuracy": pct(row["accuracy"]),
                "per domain": ", ".join(
                    f"{d} {100 * a['mean']:.0f}%" for d, a in row["by_domain"].items()
                ),
                "vs base": "" if name == "base" else difference(row["vs_base"]),
                "vs best expert": ""
                if name == summary["best_expert"]
                else difference(row["vs_best_expert"]),
                "routed right": "" if routing is None else f"{100 * routing:.0f}%",
            }
        )
    return rows


def write_adapt_report(run_dir: Path) -> tuple[Path, Table]:
    """``report.md`` of a ``mafl svf adapt`` run directory; its console table."""
    from mafl_graph.svf.runs import ADAPT_RESULT_FILE

    summary = read_summary(run_dir, ADAPT_RESULT_FILE, "mafl svf adapt")
    rows = adapt_rows(summary)
    title = f"Self-adaptation on {summary['task']} · {run_dir}"
    text = [
        f"# {title}\n",
        f"Greedy accuracy on {summary['n_test']} test problems of the mixed corpus ± standard "
        "error; differences are paired per problem, ± their standard error. 'routed right': "
        "the share of problems dispatched to their own domain's expert (or to the base where "
        "no expert has that domain).\n",
        markdown(rows),
    ]
    return publish(run_dir, title, text, rows)
