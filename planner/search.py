"""The least recomputation that fits: for each fidelity (or cycle) x backbone x batch x
precision (x the grid's other settings), `none` if it fits; else the smallest N of
`blocks:N` that fits; else what the grid's fixed policies give (`block`, `chunk:K`).

`blocks:N` checkpoints the first N blocks of one fixed order (the workload's
`checkpoint_order`), so the sets are nested and the memory of the step does not grow
with N (up to ripples where the peak has left the checkpointed blocks: +0.06 GiB at
the end of one 16-block encoder's order, benchmarks/search_check.py --brute; the search can miss a
smaller N only inside such a ripple); whether it fits is the planner's verdict (needed capacity plus what lives
outside the allocator, `MemoryEstimate.total`, against the usable bytes). So the
smallest fitting N lies between 0 (`none`, which does not fit) and the number of blocks
(`block`, which fits), and the search narrows that interval: the first probe is the N
whose blocks' saved bytes (the workload's `block_savings`, measured at a canonical
input) make up the share of the none-to-block difference that must go, the second its
neighbour (N - 1 if N fits, else N + 1), which usually closes the interval; after that,
bisection. Each round is one `estimate_grid` call over every open group (a traced N
serves every batch size and GPU count), with one pool of worker processes for all
rounds. tests/test_search.py checks the result against every N estimated.

Every estimated `blocks:N` candidate joins the grid's candidates in the ranking and in
plan.json, so the report can show each policy's memory and time. A workload without
`block_savings` (planner.workload) gets no search.

Activation offload (`offload`: nothing recomputed, saved tensors over the host link) is
probed once per group where `none` does not fit and a lower bound on its step (none's
plus the copies of the bytes by which none misses) beats every policy estimated that
fits (`search_offload`), for workloads that can offload (`offloads = True`) on a device
with a host to offload to: only there can it be the fastest policy that fits, and
estimating it everywhere would trace a model per group for nothing (on the default grids
it never is: 2-12x slower than the fastest fitting policy, docs/planner.md).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace

from planner.candidate import Candidate
from planner.estimate_types import CandidateEstimate
from planner.hardware.host_links import HostLink
from planner.cost.timing import offload_seconds
from planner.workload import Workload, step_specs

Estimator = Callable[[list[Candidate]], list[CandidateEstimate]]


def search_blocks(estimates: Sequence[CandidateEstimate], workload: Workload, usable: int,
                  estimate: Estimator) -> list[CandidateEstimate]:
    """The `blocks:N` estimates the search made, for every group of `estimates` (same
    candidate but for the policy) where `none` does not fit in `usable` bytes and
    `block` does. `estimate` estimates a list of candidates (in order)."""
    savings_of = getattr(workload, "block_savings", None)
    if savings_of is None:
        return []
    groups = _by_configuration(estimates)
    searches: dict[Candidate, _Interval] = {}
    for key, by_policy in groups.items():
        none, block = by_policy.get("none"), by_policy.get("block")
        if none is not None and block is not None and not _fits(none, usable) and _fits(block, usable):
            savings = savings_of(step_specs(key, "cuda")[0].model)
            share = (none.memory.total - usable) / max(1, none.memory.total - block.memory.total)
            searches[key] = _Interval(len(savings), _predict(savings, share))
    found: list[CandidateEstimate] = []
    while True:
        probes = {key: n for key, search in searches.items() if (n := search.next()) is not None}
        if not probes:
            return found
        missing = [replace(key, checkpointing=f"blocks:{n}") for key, n in probes.items()
                   if f"blocks:{n}" not in groups[key]]
        for e in estimate(missing) if missing else []:
            groups[replace(e.candidate, checkpointing="none")][e.candidate.checkpointing] = e
            found.append(e)
        for key, n in probes.items():
            searches[key].record(n, _fits(groups[key][f"blocks:{n}"], usable))


def search_offload(estimates: Sequence[CandidateEstimate], workload: Workload, usable: int, estimate: Estimator,
                   *, link: HostLink | None) -> list[CandidateEstimate]:
    """`offload` estimates for the groups of `estimates` where `none` does not fit in
    `usable` bytes, no `offload` is estimated yet, and offload could be the fastest
    policy that fits; none for a workload that cannot offload or without a host `link`
    to offload over (the cpu profile).

    "Could be": to fit, each micro-batch must move at least the bytes by which `none`
    misses the budget to the host and back, so offload's step takes at least `none`'s
    plus that transfer (`planner.cost.timing.offload_seconds`); where a policy already
    estimated fits and is at least that fast, offload cannot win and is not traced."""
    if link is None or not getattr(workload, "offloads", False):
        return []
    missing = [replace(key, checkpointing="offload") for key, by_policy in _by_configuration(estimates).items()
               if "offload" not in by_policy and _offload_may_win(key, by_policy, usable, link)]
    return estimate(missing) if missing else []


def _by_configuration(estimates: Sequence[CandidateEstimate]) -> dict[Candidate, dict[str, CandidateEstimate]]:
    """Estimates grouped by their candidate with policy `none` (the configuration), then
    by policy as written."""
    groups: dict[Candidate, dict[str, CandidateEstimate]] = defaultdict(dict)
    for e in estimates:
        groups[replace(e.candidate, checkpointing="none")][e.candidate.checkpointing] = e
    return groups


def _offload_may_win(key: Candidate, by_policy: dict[str, CandidateEstimate], usable: int, link: HostLink) -> bool:
    none = by_policy.get("none")
    if none is None or _fits(none, usable):
        return False
    fitting = [e.time.seconds_per_step for e in by_policy.values() if _fits(e, usable) and e.time is not None]
    if not fitting or none.time is None:
        return True
    least = none.time.seconds_per_step + key.accumulation * offload_seconds(none.memory.total - usable, link)
    return least < min(fitting)


class _Interval:
    """The smallest fitting N lies in (low, high]: low does not fit (0: none), high
    fits (the number of blocks: block)."""

    def __init__(self, count: int, guess: int) -> None:
        self.low, self.high, self.guess, self.probes = 0, count, guess, 0
        self.last: tuple[int, bool] | None = None

    def next(self) -> int | None:
        if self.high - self.low <= 1:
            return None
        if self.last is None:
            n = self.guess
        elif self.probes == 1:  # the neighbour across the boundary the guess suggests
            n = self.last[0] - 1 if self.last[1] else self.last[0] + 1
        else:
            n = (self.low + self.high) // 2
        return min(max(n, self.low + 1), self.high - 1)

    def record(self, n: int, fits: bool) -> None:
        if fits:
            self.high = min(self.high, n)
        else:
            self.low = max(self.low, n)
        self.last, self.probes = (n, fits), self.probes + 1


def _predict(savings: Sequence[int], share: float) -> int:
    """The smallest N whose first N blocks save `share` of what all of them save."""
    total, running = sum(savings) or 1, 0
    for n, saved in enumerate(savings, start=1):
        running += saved
        if running >= share * total:
            return n
    return len(savings)


def _fits(estimate: CandidateEstimate, usable: int) -> bool:
    return estimate.memory.total <= usable
