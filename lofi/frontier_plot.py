"""The memory-time frontier of a plan's choice as a figure (`lofi plan --plot`): needed
memory per GPU against time per epoch, one labelled point per checkpointing policy, the
Pareto-optimal ones joined, the budget as a vertical line, the choice highlighted."""

from __future__ import annotations

import textwrap
from pathlib import Path

from lofi.figure import check_plot, figure_format, new_figure, save_figure
from planner.frontier import Frontier

GIB = 2**30
WHAT = "the memory-time frontier"


def check_frontier_plot(path: str | Path) -> None:
    """Before planning: an OptionError now if `path` could not be drawn later."""
    check_plot(path, WHAT)


def plot_frontier(frontier: Frontier, path: str | Path, title: str) -> Path:
    """Draw `frontier` into `path` (.png or .svg), written atomically."""
    fmt = figure_format(path)
    figure = new_figure(WHAT)
    axes = figure.add_subplot()
    timed = [p for p in frontier.points if p.seconds_per_epoch is not None]
    slowest = max((p.seconds_per_epoch for p in timed), default=0.0)  # type: ignore[type-var]
    unit, scale = ("h", 3600.0) if slowest >= 3600 else ("min", 60.0)
    pareto = sorted((p for p in timed if p.pareto), key=lambda p: p.needed_bytes)
    if len(pareto) > 1:
        axes.plot([p.needed_bytes / GIB for p in pareto], [p.seconds_per_epoch / scale for p in pareto],
                  color="grey", linewidth=1.0, linestyle="--", zorder=1, label="frontier")
    for point in timed:
        x, y = point.needed_bytes / GIB, point.seconds_per_epoch / scale  # type: ignore[operator]
        colour = "tab:green" if point.fits else "tab:red"
        if point.chosen:
            axes.scatter([x], [y], s=160, facecolors="none", edgecolors="black", linewidths=2.0, zorder=3,
                         label="chosen")
        axes.scatter([x], [y], s=40, color=colour, zorder=2)
        axes.annotate(point.checkpointing, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8,
                      fontweight="bold" if point.chosen else "normal")
    axes.axvline(frontier.usable_bytes / GIB, color="tab:orange", linewidth=1.5,
                 label=f"budget {frontier.usable_bytes / GIB:.1f} GiB")
    axes.set_xlabel("needed memory per GPU (GiB)")
    axes.set_ylabel(f"time per epoch ({unit})")
    axes.set_xlim(left=0.0)
    axes.set_ylim(0.0, 1.2 * slowest / scale if slowest else 1.0)
    axes.grid(alpha=0.3)
    axes.set_title(textwrap.fill(title, 80), fontsize=9)
    axes.legend(fontsize=8, loc="upper right")
    return save_figure(figure, path, fmt)
