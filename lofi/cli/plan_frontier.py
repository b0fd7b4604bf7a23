"""The memory-time frontier of the choice as a rich table: one row per checkpointing
policy the plan estimated for the chosen configuration, the budget line under it."""

from __future__ import annotations

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from lofi.cli.plan_table import GIB, batch_text, fidelity_name
from planner.choose import hours
from planner.frontier import Frontier
from planner.plan import Hardware


def frontier_title(frontier: Frontier) -> str:
    c = frontier.configuration
    return (f"Memory–time frontier: {fidelity_name(c)} {c.backbone}, batch {batch_text(c)}, {c.precision}, "
            f"under each checkpointing policy")


def frontier_table(frontier: Frontier, hardware: Hardware, margin: float) -> Group:
    unit = "GPU" if hardware.kind == "gpu" else "process"
    title = frontier_title(frontier)
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
    table.add_column("policy")
    table.add_column("needed GiB", justify="right")
    table.add_column("time / epoch", justify="right")
    table.add_column("fits", justify="center")
    table.add_column("frontier", justify="center")
    table.add_column("chosen", justify="center")
    for point in frontier.points:
        style = "bold green" if point.chosen else ("" if point.fits else "red")
        table.add_row(
            Text(point.checkpointing, style=style),
            Text(f"{point.needed_bytes / GIB:.2f}", style=style),
            hours(point.seconds_per_epoch) if point.seconds_per_epoch is not None else "–",
            Text("✓", style="green") if point.fits else Text("✗", style="red"),
            "●" if point.pareto else "",
            Text("✓ chosen", style="bold green") if point.chosen else "",
        )
    budget = Text(
        f"budget {frontier.usable_bytes / GIB:.1f} GiB per {unit} = {frontier.capacity_bytes / GIB:.1f} GiB × "
        f"(1 − {margin:.0%} margin). ● on the frontier: no other policy needs as little memory and "
        "time and less of one",
        style="grey70",
    )
    return Group(Text(title, style="bold"), table, budget)
