"""The caching allocator over a traced step's steady state: two optimizer steps of up to
two micro-batches with the target's cuBLAS/cuDNN workspaces (`planner.tracing.synthesis`),
replayed through the allocator model (`planner.cost.replay`): the unlimited replay
(allocated peak, bytes by category, reserved peak) and the needed capacity, bisected with
the allocator's release-and-retry path."""

from __future__ import annotations

from dataclasses import dataclass

from planner.cost.allocator import ReplayResult
from planner.cost.overheads import Workspaces
from planner.cost.replay import needed_capacity, replay
from planner.tracing.recorder import Trace
from planner.tracing.synthesis import expand_periods, steady_state, with_repeats, with_workspaces

REPEAT_CAP = 2  # more repeated periods than this: replay at 1 and 2 and extrapolate


@dataclass(frozen=True)
class StepMemory:
    """The allocator's view of a steady-state step."""

    free: ReplayResult  # unlimited replay: allocated peak, categories, unconstrained reserved peak
    needed: int  # the smallest capacity without an OOM
    releases_per_step: int  # cache releases in the last step at that capacity


def replay_steady(trace: Trace, accumulation: int, kind: str, capacity: int | None,
                  spaces: Workspaces = Workspaces((), 0), expandable: bool = False, *, probe: bool = False
                  ) -> ReplayResult:
    """The allocator over the steady state of `trace` with its workspaces, at `capacity`
    (None: unlimited); retries in the last step count as `retries_late`. `probe`: stop
    at the first out-of-memory (a bisection step)."""
    events = steady_events(trace, accumulation, spaces)
    return replay(events.ops, events.ids, events.sizes, events.categories, kind=kind, capacity=capacity,
                  small_pool="packed", expandable=expandable, count_from=events.last_step, stop_on_oom=probe)


def steady_events(trace: Trace, accumulation: int, spaces: Workspaces):
    return with_workspaces(steady_state(expand_periods(trace), accumulation), spaces.cublas, spaces.cudnn)


def step_memory(trace: Trace, accumulation: int, kind: str, spaces: Workspaces, expandable: bool = False,
                verdict: tuple[int, int] | None = None) -> StepMemory:
    """Unlimited replay and needed capacity of the steady state of `trace`; `verdict`:
    the allocator capacities between which the fit is decided (outside them the needed
    capacity is bisected to within 1 % of the allocated peak, `planner.cost.replay.needed_capacity`).

    Hundreds of repeated periods (a chunked encoder at batch 16) would make a stream of
    millions of events, but a period leaves next to nothing behind: the allocated peak
    (and each category) is affine in the number of periods while the allocator's slack
    (reserved or needed, minus allocated) stays the same, so replay with 1 and 2 periods
    and extrapolate (tests/test_plan_workload.py: within 1% of the full replay)."""

    def bisect(t: Trace) -> tuple[int, ReplayResult, ReplayResult]:
        events = steady_events(t, accumulation, spaces)
        arrays = (events.ops, events.ids, events.sizes, events.categories)
        if kind == "plain":
            free = replay(*arrays, kind=kind)
            return free.allocated_peak, free, free

        def run(capacity: int | None) -> ReplayResult:
            return replay(*arrays, kind=kind, capacity=capacity, small_pool="packed", expandable=expandable,
                          count_from=events.last_step, stop_on_oom=capacity is not None)

        return needed_capacity(run, verdict=verdict)

    repeats = trace.repeats
    if repeats <= REPEAT_CAP:
        needed, at_needed, free = bisect(trace)
        return StepMemory(free, needed, at_needed.retries_late)
    low, high = REPEAT_CAP - 1, REPEAT_CAP
    a = replay_steady(with_repeats(trace, low), accumulation, kind, None, spaces, expandable)
    verdict = None  # the two-period stream is smaller than the step: bisect it to 32 MiB
    needed_b, at_needed, b = bisect(with_repeats(trace, high))
    t = (repeats - low) / (high - low)

    def affine(x: int, y: int) -> int:
        return round(x + (y - x) * t)

    allocated = affine(a.allocated_peak, b.allocated_peak)
    free = ReplayResult(
        allocated_peak=allocated,
        reserved_peak=max(allocated, b.reserved_peak + allocated - b.allocated_peak),
        peak_by_category=tuple(affine(x, y) for x, y in zip(a.peak_by_category, b.peak_by_category)),
        peak_event=-1,
        segments=b.segments,
    )
    return StepMemory(free, max(allocated, needed_b + allocated - b.allocated_peak), at_needed.retries_late)
