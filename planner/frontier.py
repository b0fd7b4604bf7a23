"""The memory-time frontier of a plan's choice: the same training configuration (fidelity
or cycle, backbone, head, batch per GPU, precision, optimizer, BatchNorm mode, world size,
allocator setting) under each checkpointing policy the plan estimated, one point per
policy: the memory it needs (the verdict's number, `MemoryEstimate.total`: needed
capacity of the caching allocator plus what lives outside it, as planner.choose decides
fits) against its time per epoch.

Pure: a plan's entries in, a Frontier out. Whatever policies the plan holds are points;
no policy is named here."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from planner.candidate import Candidate
from planner.plan import Plan, PlanEntry


@dataclass(frozen=True)
class FrontierPoint:
    checkpointing: str  # the policy as written in plan.json
    needed_bytes: int  # MemoryEstimate.total: what decides fits
    seconds_per_epoch: float | None  # None: no time estimate
    fits: bool  # needed_bytes <= the usable budget
    pareto: bool  # no other point needs no more memory and takes no more time, one of them strictly less
    chosen: bool  # the plan's choice
    rank: int  # the entry's rank in the plan


@dataclass(frozen=True)
class Frontier:
    configuration: Candidate  # the chosen candidate (its policy is one of the points)
    points: tuple[FrontierPoint, ...]  # least memory first
    usable_bytes: int  # the budget line: memory x (1 - margin)
    capacity_bytes: int  # the GPU's memory

    @property
    def chosen(self) -> FrontierPoint | None:
        return next((p for p in self.points if p.chosen), None)


def same_configuration(a: Candidate, b: Candidate) -> bool:
    """`a` and `b` differ at most in their checkpointing policy."""
    return replace(a, checkpointing=b.checkpointing) == b


def frontier(entries: Sequence[PlanEntry], chosen: Candidate, usable_bytes: int, capacity_bytes: int) -> Frontier:
    """One point per checkpointing policy of `chosen`'s configuration among `entries`
    (where a policy appears twice, its best-ranked entry), least memory first."""
    by_policy: dict[str, PlanEntry] = {}
    for entry in sorted(entries, key=lambda e: e.rank):
        if same_configuration(entry.candidate, chosen):
            by_policy.setdefault(entry.candidate.checkpointing, entry)
    found = list(by_policy.values())
    points = [
        FrontierPoint(
            checkpointing=entry.candidate.checkpointing,
            needed_bytes=entry.memory.total,
            seconds_per_epoch=entry.time.seconds_per_epoch if entry.time is not None else None,
            fits=entry.memory.total <= usable_bytes,
            pareto=not any(_dominates(other, entry) for other in found),
            chosen=entry.candidate == chosen,
            rank=entry.rank,
        )
        for entry in found
    ]
    points.sort(key=lambda p: (p.needed_bytes, _seconds(p.seconds_per_epoch), p.checkpointing))
    return Frontier(chosen, tuple(points), usable_bytes, capacity_bytes)


def plan_frontier(plan: Plan) -> Frontier:
    """The frontier of a plan's choice."""
    return frontier(plan.candidates, plan.chosen, plan.scope.usable_bytes, plan.scope.hardware.memory_bytes)


def _seconds(value: float | None) -> float:
    return math.inf if value is None else value


def _dominates(a: PlanEntry, b: PlanEntry) -> bool:
    """`a` needs no more memory and takes no more time than `b`, and strictly less of one
    (a point without a time estimate is as slow as can be)."""
    memory_a, memory_b = a.memory.total, b.memory.total
    time_a = _seconds(a.time.seconds_per_epoch if a.time else None)
    time_b = _seconds(b.time.seconds_per_epoch if b.time else None)
    return memory_a <= memory_b and time_a <= time_b and (memory_a < memory_b or time_a < time_b)
