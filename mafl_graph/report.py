"""Tables and plots of a comparison (``mafl compare``) or a single loop (``mafl loop``).

The table follows the paper's Table 1 (one row per method: its best-known iteration, i.e. the
last one run), plus one row per iteration for the methods that iterate; the plots follow its
Fig. 1 (accuracy per iteration, multiagent vs single-agent fine-tuning) and its figure of the
diversity measures per iteration.

The console shows a compact table (method, iteration, both accuracies, consensus, time) that
fits 80 columns; ``wide=True`` and ``report.md`` give every column.

The figures' y ranges are chosen so that noise does not look like a trend: accuracy spans the
means ± 1 standard error padded by 5 points, and at least :data:`MIN_ACCURACY_SPAN` points,
within 0–100%; consensus spans 0–100%; the other diversity measures, each zero for identical
agents, span zero to 10% above their largest value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.table import Table

from mafl_graph.methods import Method, get_method, method_names
from mafl_graph.rundir import RunLayout, read_settings

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Metrics = Mapping[str, Sequence[Mapping[str, Any]]]
"""``{method (or loop, sweep point, …): its per-iteration records}``."""

MIN_ACCURACY_SPAN = 20.0
"""The least span (percentage points) of an accuracy axis: with ~100 test problems a standard
error is 3–5 points, so a narrower axis would draw sampling noise as a steep slope."""

LOOP = "loop"
"""The key of a loop run whose method its manifest does not name."""


def load_metrics(run_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """``{method: metrics}`` of a comparison directory, or of one loop (see :func:`method_of`)."""
    layout = RunLayout(run_dir)
    if layout.metrics.is_file():
        return {method_of(layout.root): _read(layout.metrics)}
    runs = {name: layout.method(name).metrics for name in method_names()}
    found = {name: _read(path) for name, path in runs.items() if path.is_file()}
    if not found:
        raise FileNotFoundError(
            f"No {layout.metrics.name} in {layout.root} or its method subdirectories."
        )
    return found


def method_of(run_dir: str | Path) -> str:
    """The method a loop run's rows go under, from its manifest.

    An ablation records the method it varies and the options it fixes (``recorded_as``), so
    the registered method whose recorded name and fixed options the settings match, fixing
    the most of them, is the one; several such (a run that fixes two ablations' options) give
    the recorded name with those options. A run without a readable manifest is ``"loop"``.
    """
    try:
        settings = read_settings(RunLayout(run_dir).manifest)
    except (OSError, ValueError):
        return LOOP
    recorded = settings.get("method")
    if not isinstance(recorded, str) or not recorded:
        return LOOP
    scored: dict[str, int] = {}
    for name in method_names():
        method = get_method(name)
        fixed = {k: v for k, v in method.options.items() if k in settings}
        if method.recorded_as == recorded and all(settings[k] == v for k, v in fixed.items()):
            scored[name] = len(fixed)
    best = [name for name, score in scored.items() if score == max(scored.values(), default=0)]
    if len(best) == 1:
        return best[0]
    fixed = {k: settings[k] for name in best for k in get_method(name).options if k in settings}
    if not fixed:  # a method this process has not registered
        return recorded
    return f"{recorded} ({', '.join(f'{k}={v}' for k, v in fixed.items())})"


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


_UNDECIDED = "*"


def _pct_compact(acc: Mapping[str, Any] | None) -> str:
    """``_pct`` with the count of undecided grades reduced to a mark."""
    if not acc or not acc.get("n"):
        return "–"
    mark = _UNDECIDED if acc.get("undecided") else ""
    return f"{100 * acc['mean']:.1f} ± {100 * acc['stderr']:.1f}{mark}"


def _num(value: Any, digits: int = 3) -> str:
    # Adding 0.0 turns the -0.0 that rounding a tiny negative gives into 0.0 ("-0.000").
    return "–" if value is None else f"{round(value, digits) + 0.0:.{digits}f}"


def rows(metrics: Metrics, *, wide: bool = True) -> list[dict[str, str]]:
    """One row per (method, evaluated iteration), in the table's column order.

    ``wide``: every column (report.md, sweep.md); else the compact console columns: method,
    iteration, round-1 and vote accuracy (%), consensus (%) and the iteration's time (min).
    """
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
            label = (
                "base (untuned debate)"
                if record["iteration"] == 0 and _iterates(method)
                else _label(method)
            )
            out.append((_wide_row if wide else _compact_row)(label, record))
    return out


def _wide_row(label: str, record: Mapping[str, Any]) -> dict[str, str]:
    ev = record["eval"]
    rounds = ev.get("round_accuracy") or [None]
    diversity = record.get("diversity") or {}
    train = record.get("train") or {}
    tuning = record.get("tuning") or {}
    sizes = (record.get("datasets") or {}).get("datasets", {})
    return {
        "method": label,
        "iteration": str(record["iteration"]),
        "single agent (round 1)": _pct(rounds[0]),
        "final answer (vote)": _pct(ev.get("accuracy")),
        "consensus": f"{100 * ev.get('consensus', 0):.0f}%",
        "embedding dissim.": _num(diversity.get("embedding_dissimilarity")),
        "NLL": _num(diversity.get("likelihood_nll"), 2),
        "KL": _num(diversity.get("kl")),
        "train examples": str(sum(d["examples"] for d in sizes.values())) if sizes else "–",
        "eval tokens": f"{ev.get('tokens', 0):,}",
        "eval time": f"{ev.get('seconds', 0) / 60:.1f} min",
        "train+tune time": _minutes(train, tuning) if train else "–",
    }


def _compact_row(label: str, record: Mapping[str, Any]) -> dict[str, str]:
    ev = record["eval"]
    steps = [record.get(step) or {} for step in ("train", "tuning", "eval")]
    return {
        "method": label,
        "iteration": str(record["iteration"]),
        "round-1 accuracy (%)": _pct_compact((ev.get("round_accuracy") or [None])[0]),
        "vote accuracy (%)": _pct_compact(ev.get("accuracy")),
        "consensus (%)": f"{100 * ev.get('consensus', 0):.0f}",
        "time (min)": f"{sum(s.get('seconds', 0) for s in steps) / 60:.1f}",
    }


def _minutes(*steps: Mapping[str, Any]) -> str:
    return f"{sum(s.get('seconds', 0) for s in steps) / 60:.1f} min"


def markdown_table(table_rows: Sequence[Mapping[str, str]]) -> str:
    if not table_rows:
        return "(no finished evaluation yet)\n"
    columns = list(table_rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in table_rows]
    return "\n".join(lines) + "\n"


def console_table(metrics: Metrics, *, wide: bool = False, title: str = "") -> Table:
    """A rich table of ``metrics`` for the console: compact (80 columns) unless ``wide``."""
    found = rows(metrics, wide=wide)
    columns = list(found[0]) if found else ["method", "iteration"]
    if wide:
        table = Table(title=title or None)
        for column in columns:
            table.add_column(column, justify="left" if column == "method" else "right")
    else:
        notes = ["accuracy: mean ± standard error; time: train debates, tuning and evaluation"]
        if any(row[c].endswith(_UNDECIDED) for row in found for c in columns):
            notes.append(f"{_UNDECIDED} some grades undecided (report.md counts them)")
        # No vertical rules, two spaces between columns, and each number column exactly as
        # wide as its longest cell or header word: what is left of 80 columns goes to the
        # method, which wraps at spaces.
        table = Table(
            title=title or None,
            caption="\n".join(notes),
            box=box.SIMPLE_HEAD,
            show_edge=False,
            pad_edge=False,
            collapse_padding=True,
        )
        for column in columns:
            if column == "method":
                table.add_column(column)
                continue
            cells = [row[column] for row in found]
            width = max(len(word) for word in [*column.split(), *cells])
            table.add_column(column, justify="right", width=width)
    for row in found:
        table.add_row(*row.values())
    return table


def iteration_table(
    records: Sequence[Mapping[str, Any]],
    title: str = "",
    *,
    method: str = LOOP,
    wide: bool = False,
) -> Table:
    """A rich table of one loop's iterations, for the console; ``method``: what its rows
    are labelled by (a registered method's name gives its label; see :func:`method_of`)."""
    return console_table({method: records}, wide=wide, title=title)


_RUN_REPORTS: dict[str, str] = {
    "svf_run.json": "mafl_graph.svf.report:write_svf_report",
    "svf_adapt_run.json": "mafl_graph.svf.report:write_adapt_report",
    "svf_compare_run.json": "mafl_graph.svf.compare:write_compare_report",
    "experts_run.json": "mafl_graph.experts.report:write_experts_report",
}
"""Run kinds other than loops and comparisons: the file that marks such a run directory ->
the ``module:function`` writing its report (``run_dir -> (report path, console table)``)."""


def register_run_report(marker: str, writer: str) -> None:
    """Make :func:`report_run` render run directories holding the file ``marker`` with
    ``writer``, a ``"module:function"`` path (imported when such a run is reported)."""
    _RUN_REPORTS[marker] = writer


def report_run(run_dir: str | Path, *, wide: bool = False) -> tuple[Path, Table]:
    """Write ``run_dir``'s report, whatever kind of run it holds; returns its path and a
    table for the console."""
    import importlib

    root = Path(run_dir)
    for marker, writer in _RUN_REPORTS.items():
        if (root / marker).is_file():
            module, _, name = writer.partition(":")
            path, table = getattr(importlib.import_module(module), name)(root)
            return path, table
    path = write_report(root)
    return path, console_table(load_metrics(root), wide=wide, title=str(root))


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
    if plots:
        text.append("Error bars: ±1 standard error over the test problems.\n")
    layout.report.write_text("\n".join(text))
    layout.report.with_suffix(".json").write_text(json.dumps(metrics, indent=2) + "\n")
    return layout.report


# Figures ------------------------------------------------------------------------------------

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_X_LABEL = "fine-tuning iteration"

# (key in a record's "diversity", panel title, y label, scale to the plotted unit)
DIVERSITY_MEASURES = (
    ("consensus", "Consensus", "agreement with the majority (%)", 100.0),
    ("embedding_dissimilarity", "Embedding dissimilarity", "1 − cosine similarity", 1.0),
    ("likelihood_nll", "Likelihood NLL", "cross-agent NLL (nats/token)", 1.0),
    ("kl", "KL divergence", "KL (nats/token)", 1.0),
)

Curve = list[tuple[int, float, float]]
"""(iteration, value, standard error) points of one method."""


def _plots(metrics: Metrics, layout: RunLayout) -> list[str]:
    """The figures, written beside the report; returns their names."""
    try:
        figures = {"accuracy": accuracy_figure(metrics), "diversity": diversity_figure(metrics)}
    except ImportError:  # the table is the result; plots need the `analysis` extra
        return []
    written = []
    for name, figure in figures.items():
        if figure is not None:
            figure.savefig(layout.figure(name), dpi=150)
            written.append(layout.figure(name).name)
    return written


def accuracy_range(values: Sequence[float]) -> tuple[float, float]:
    """The y range (%) of an accuracy axis holding ``values`` (means ± standard error): 5
    points of padding, at least :data:`MIN_ACCURACY_SPAN` points, within 0–100, at
    multiples of 5."""
    lo, hi = max(0.0, min(values) - 5), min(100.0, max(values) + 5)
    if hi - lo < MIN_ACCURACY_SPAN:
        centre = (lo + hi) / 2
        lo = min(max(0.0, centre - MIN_ACCURACY_SPAN / 2), 100.0 - MIN_ACCURACY_SPAN)
        hi = lo + MIN_ACCURACY_SPAN
    return 5 * math.floor(lo / 5), 5 * math.ceil(hi / 5)


def accuracy_figure(metrics: Metrics) -> Figure | None:
    """Accuracy (%) per fine-tuning iteration, one line per method with ±1 standard error:
    the debate's vote and the agents' round-1 answers side by side. A method that does not
    iterate (majority vote) is a dashed line with its standard-error band on the vote panel.
    None when no loop was evaluated."""
    from matplotlib.figure import Figure

    evaluated = {m: [r for r in rs if r.get("eval")] for m, rs in metrics.items()}
    evaluated = {m: rs for m, rs in evaluated.items() if rs}
    loops = {m: rs for m, rs in evaluated.items() if _iterates(m)}
    if not loops:
        return None
    styles = _styles(metrics)
    fig = Figure(figsize=(8.0, 4.4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    spanned: list[float] = []
    for ax, key, title in (
        (axes[0], "final", "Debate (majority vote of the final round)"),
        (axes[1], "first", "Single agent (round-1 answers)"),
    ):
        curves = {
            method: [
                (
                    r["iteration"],
                    100 * _acc(r["eval"], key)["mean"],
                    100 * _acc(r["eval"], key)["stderr"],
                )
                for r in records
            ]
            for method, records in loops.items()
        }
        spanned += [y + sign * e for c in curves.values() for _, y, e in c for sign in (-1, 1)]
        _draw(ax, curves, styles, errorbars=True)
        ax.set_title(title)
    for method, records in evaluated.items():
        if method in loops:
            continue
        acc = records[-1]["eval"]["accuracy"]
        mean, error = 100 * acc["mean"], 100 * acc["stderr"]
        spanned += [mean - error, mean + error]
        color = styles[method]["color"]
        axes[0].axhline(mean, color=color, linestyle="--", linewidth=1.5, label=_label(method))
        axes[0].axhspan(mean - error, mean + error, color=color, alpha=0.12, linewidth=0)
    axes[0].set_ylim(*accuracy_range(spanned))
    axes[0].set_ylabel("accuracy (%)")
    _legend(fig, axes, metrics)
    return fig


def diversity_figure(metrics: Metrics) -> Figure | None:
    """One panel per diversity measure recorded, per fine-tuning iteration, one line per
    method. Only methods measured after tuning are drawn (a comparison measures its long
    runs; the others hold only the shared untuned debate's). None when nothing was measured.
    """
    from matplotlib.figure import Figure

    loops = {m: rs for m, rs in metrics.items() if _iterates(m)}
    panels: dict[str, dict[str, Curve]] = {}
    for key, _, _, scale in DIVERSITY_MEASURES:
        curves = {
            method: [
                (r["iteration"], scale * float(r["diversity"][key]), 0.0)
                for r in records
                if (r.get("diversity") or {}).get(key) is not None
            ]
            for method, records in loops.items()
        }
        tuned = {m: c for m, c in curves.items() if any(it > 0 for it, _, _ in c)}
        if chosen := tuned or {m: c for m, c in curves.items() if c}:
            panels[key] = chosen
    if not panels:
        return None
    styles = _styles(metrics)
    columns = min(len(panels), 2)
    rows_ = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(4.2 * columns, 3.3 * rows_ + 0.7), layout="constrained")
    grid = [ax for row in fig.subplots(rows_, columns, squeeze=False) for ax in row]
    for ax in grid[len(panels) :]:
        ax.remove()
    measures = [m for m in DIVERSITY_MEASURES if m[0] in panels]
    for ax, (key, title, ylabel, _) in zip(grid, measures, strict=False):
        _draw(ax, panels[key], styles, errorbars=False)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        # Zero is "the agents are identical" for every measure but consensus (at 100%).
        top = max(y for c in panels[key].values() for _, y, _ in c)
        ax.set_ylim(0.0, 100.0 if key == "consensus" else (1.1 * top if top > 0 else 1.0))
    _legend(fig, grid[: len(panels)], metrics)
    return fig


def _styles(metrics: Metrics) -> dict[str, dict[str, Any]]:
    """One colour and marker per method, the same in every panel and figure."""
    return {
        name: {"color": f"C{i % 10}", "marker": _MARKERS[i % len(_MARKERS)]}
        for i, name in enumerate(metrics)
    }


def _draw(
    ax: Axes, curves: Mapping[str, Curve], styles: Mapping[str, Any], *, errorbars: bool
) -> None:
    """One line per method over integer iteration ticks.

    Where methods differ at an iteration, their points are nudged apart so that error bars do
    not hide each other; where all agree (the shared untuned debate), they stay on the tick.
    """
    at: dict[int, set[tuple[float, float]]] = {}
    for curve in curves.values():
        for it, y, e in curve:
            at.setdefault(it, set()).add((y, e))
    for i, (method, curve) in enumerate(curves.items()):
        nudge = 0.06 * (i - (len(curves) - 1) / 2)
        xs = [it + (nudge if len(at[it]) > 1 else 0.0) for it, _, _ in curve]
        ys = [y for _, y, _ in curve]
        style = {"linewidth": 1.8, "markersize": 6, "label": _label(method), **styles[method]}
        if errorbars:
            ax.errorbar(xs, ys, yerr=[e for _, _, e in curve], capsize=4, **style)
        else:
            ax.plot(xs, ys, **style)
    ticks = sorted(at)
    ax.set_xticks(ticks, labels=[str(t) for t in ticks])
    ax.set_xlim(ticks[0] - 0.5, ticks[-1] + 0.5)
    ax.set_xlabel(_X_LABEL)
    ax.grid(axis="y", alpha=0.3)


def _legend(fig: Figure, axes: Sequence[Axes], metrics: Metrics) -> None:
    """One legend for the figure, below its panels: each method once, in the table's order."""
    entries: dict[str, Any] = {}
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        for handle, label in zip(handles, labels, strict=True):
            entries.setdefault(label, handle)
    order = [label for label in map(_label, metrics) if label in entries]
    if order:
        fig.legend(
            [entries[label] for label in order],
            order,
            loc="outside lower center",
            ncol=min(len(order), 2),
            fontsize="medium",
            frameon=False,
        )


def _acc(evaluation: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    if key == "final":
        return evaluation["accuracy"]  # type: ignore[no-any-return]
    return (evaluation.get("round_accuracy") or [evaluation["accuracy"]])[0]  # type: ignore[no-any-return]
