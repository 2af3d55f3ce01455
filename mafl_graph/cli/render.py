"""Tables the commands print."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from mafl_graph.evaluate import DebateSummary
    from mafl_graph.finetune.tuners import TuneOutcome
    from mafl_graph.finetune.tuners.base import TunerBackend
    from mafl_graph.traces import UnfinishedThread


def summary_table(summary: DebateSummary, seconds: float, title: str) -> Table:
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("debate accuracy (majority of final round)", str(summary.accuracy))
    for i, acc in enumerate(summary.round_accuracy, start=1):
        table.add_row(f"single-agent answers, round {i}", str(acc))
    table.add_row("consensus (agreement with the majority)", f"{100 * summary.consensus:.1f}%")
    table.add_row("failed debates", str(summary.failed))
    table.add_row("undecided grades (grading ran out of time)", str(summary.undecided))
    table.add_row("wall time", f"{seconds:.0f} s")
    return table


def unfinished_line(unfinished: Sequence[UnfinishedThread]) -> str | None:
    if not unfinished:
        return None
    shown = ", ".join(
        f"{u.problem_id}" + (f" ({u.error})" if u.error else "") for u in unfinished[:10]
    )
    more = f" and {len(unfinished) - 10} more" if len(unfinished) > 10 else ""
    return f"[yellow]{len(unfinished)} unfinished debate(s) skipped:[/yellow] {escape(shown)}{more}"


def dataset_table(report: Mapping[str, Any], target: str, other: str) -> Table:
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
    return table


def tune_table(outcomes: Sequence[TuneOutcome], title: str, backend: type[TunerBackend]) -> Table:
    """One row per dataset: where it started, its tuned model or the (redacted) error."""
    from mafl_graph.redact import redact

    table = Table(title=title)
    for column in ("dataset", "from", "tuned model", backend.detail_column):
        table.add_column(column, overflow="fold")
    for o in outcomes:
        result = o.tuned.model if o.tuned else f"[red]{escape(redact(o.error or ''))}[/red]"
        table.add_row(o.dataset.name, o.base, result, backend.detail(o.tuned) if o.tuned else "")
    return table
