"""`lofi report plan.json`: the budget report of a saved plan, again."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("plan_file", type=click.Path(path_type=Path, dir_okay=False), default="plan.json", required=False)
@click.option("--all", "show_all", is_flag=True, help="Show every candidate, not only the best of each configuration.")
def report(plan_file: Path, show_all: bool) -> None:
    """Render the report of PLAN_FILE (default: plan.json) written by `lofi plan`."""
    from lofi.cli.console import console
    from lofi.cli.plan_render import render_report
    from lofi.cli.plan_report import report_from_plan
    from planner.plan_file import load_plan

    render_report(report_from_plan(load_plan(plan_file), show_all=show_all), console)
