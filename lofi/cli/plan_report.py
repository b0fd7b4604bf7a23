"""The budget report of `lofi plan` and `lofi report`, gathered: which rows to show, the
choice, the frontier of the choice. plan_render.py renders it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from planner.choose import Ranking
from planner.frontier import Frontier, frontier
from planner.plan import Plan, PlanEntry, PlanScope, entries_from_ranking, hardware_of
from planner.planning import PlanRequest


@dataclass(frozen=True)
class Report:
    scope: PlanScope  # what the plan (or ranking) is made for
    rows: tuple[PlanEntry, ...]  # the rows shown, in rank order
    total_candidates: int
    configurations: int
    show_all: bool
    chosen: PlanEntry | None
    why: str | None
    notices: tuple[str, ...]
    estimates: str  # how the numbers were obtained (estimated / measured, calibration)
    frontier: Frontier | None = None  # the choice under every checkpointing policy of the plan


def gather_report(scope: PlanScope, entries: Sequence[PlanEntry], why: str | None, notices: Sequence[str] = (),
                  show_all: bool = False) -> Report:
    """The rows to show: every candidate (`show_all`), or the best of each configuration
    (backbone x fidelity): its best-ranked fitting candidate, else its smallest."""
    ordered = sorted(entries, key=lambda e: e.rank)
    chosen = next((e for e in ordered if e.fits and e.reason is None), None)
    groups: dict[tuple, list[PlanEntry]] = {}
    for entry in ordered:
        groups.setdefault((entry.candidate.backbone, entry.candidate.fidelities), []).append(entry)
    if show_all:
        rows = ordered
    else:
        best = [next((e for e in group if e.fits), min(group, key=lambda e: e.total_bytes)) for group in groups.values()]
        rows = sorted(best, key=lambda e: e.rank)
    sources = sorted({(e.memory.source, e.memory.calibration) for e in ordered}, key=str)
    estimates = "; ".join(f"{source}" + (f" (calibration: {cal})" if cal else " (no calibration)") for source, cal in sources)
    capacity = scope.hardware.memory_bytes
    found = frontier(ordered, chosen.candidate, scope.usable_bytes, capacity) if chosen is not None else None
    return Report(scope, tuple(rows), len(ordered), len(groups), show_all, chosen, why, tuple(notices), estimates, found)


def report_from_plan(plan: Plan, show_all: bool = False) -> Report:
    return gather_report(plan.scope, plan.candidates, plan.why, plan.notices, show_all)


def report_from_request(request: PlanRequest, ranking: Ranking, show_all: bool = False) -> Report:
    """The report of a ranking that chose nothing (no Plan): every candidate fails."""
    spec = request.spec
    scope = PlanScope(hardware_of(request.profile, request.detected), spec.gpus, spec.nodes, request.margin,
                      ranking.usable_bytes, spec.global_batch, request.videos_per_epoch, request.dataset)
    return gather_report(scope, entries_from_ranking(ranking), None, (), show_all)
