"""Render a budget report (plan_report.Report) with rich: the header and the candidates
(plan_table), the chosen one (plan_chosen), the memory-time frontier of the choice
(plan_frontier)."""

from __future__ import annotations

from rich.console import Console

from lofi.cli.plan_chosen import chosen_panel
from lofi.cli.plan_frontier import frontier_table
from lofi.cli.plan_report import Report
from lofi.cli.plan_table import candidates_table, header


def render_report(report: Report, console: Console) -> None:
    for notice in report.notices:
        console.print(f"[yellow]note:[/] {notice}", highlight=False)
    console.print(header(report))
    console.print(candidates_table(report))
    plural = "s" if report.configurations > 1 else ""
    shown = "every candidate" if report.show_all else f"the best candidate of each of {report.configurations} configuration{plural}"
    console.print(
        f"[dim]Showing {shown}; {report.total_candidates} candidate{'s' if report.total_candidates > 1 else ''} in all"
        f"{'' if report.show_all else ' (--all shows every one)'}. Memory: {report.estimates}.[/]",
        highlight=False,
    )
    if report.chosen is not None:
        console.print(chosen_panel(report, report.chosen))
    if report.frontier is not None:
        console.print(frontier_table(report.frontier, report.scope.hardware, report.scope.margin))
