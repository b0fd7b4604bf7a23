"""The least recomputation that fits: for each fidelity (or cycle) x backbone x batch x
precision (x the grid's other settings), `none` if it fits; else the smallest N of
`blocks:N` that fits; else what the grid's fixed policies give (`block`, `chunk:K`).

`blocks:N` checkpoints the first N blocks of one fixed order (the workload's
`checkpoint_order`), so the sets are nested and the memory of the step does not grow
with N; whether it fits is the planner's verdict (needed capacity plus what lives
outside the allocator, `MemoryEstimate.total`, against the usable bytes). So N is
bisected between 0 (`none`, which does not fit) and the number of blocks (`block`,
which fits): about log2(blocks) estimates per group, each round one `estimate_grid` call
over every group still open (traces of one N are shared by every batch size and GPU
count). tests/test_search.py checks the result against every N estimated.

Every estimated `blocks:N` candidate joins the grid's candidates in the ranking and in
plan.json, so the report can show each policy's memory and time. A workload without
`block_count` (planner.workload) gets no search.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace

from planner.candidate import Candidate
from planner.estimates import CandidateEstimate
from planner.workload import Workload, step_specs

Estimator = Callable[[list[Candidate]], list[CandidateEstimate]]


def search_blocks(estimates: Sequence[CandidateEstimate], workload: Workload, usable: int,
                  estimate: Estimator) -> list[CandidateEstimate]:
    """The `blocks:N` estimates the search made, for every group of `estimates` (same
    candidate but for the policy) where `none` does not fit in `usable` bytes and
    `block` does. `estimate` estimates a list of candidates (in order)."""
    count_of = getattr(workload, "block_count", None)
    if count_of is None:
        return []
    groups: dict[Candidate, dict[str, CandidateEstimate]] = defaultdict(dict)
    for e in estimates:
        groups[replace(e.candidate, checkpointing="none")][e.candidate.checkpointing] = e
    bounds: dict[Candidate, list[int]] = {}  # group -> [largest N that does not fit, smallest N that fits]
    for key, by_policy in groups.items():
        none, block = by_policy.get("none"), by_policy.get("block")
        if none is not None and block is not None and not _fits(none, usable) and _fits(block, usable):
            bounds[key] = [0, count_of(step_specs(key, "cuda")[0].model)]
    found: list[CandidateEstimate] = []
    while True:
        middle = {key: (low + high) // 2 for key, (low, high) in bounds.items() if high - low > 1}
        if not middle:
            return found
        asked = [replace(key, checkpointing=f"blocks:{n}") for key, n in middle.items()]
        missing = [c for key, c in zip(middle, asked) if c.checkpointing not in groups[key]]
        for e in estimate(missing) if missing else []:
            groups[replace(e.candidate, checkpointing="none")][e.candidate.checkpointing] = e
            found.append(e)
        for key, n in middle.items():
            bounds[key][0 if not _fits(groups[key][f"blocks:{n}"], usable) else 1] = n


def least_recompute(estimates: Sequence[CandidateEstimate], usable: int) -> dict[Candidate, CandidateEstimate]:
    """For each group (the candidate with policy `none` as key), the fitting estimate
    with the least recomputation: `none`, the smallest `blocks:N`, `block`, the largest
    `chunk:K` (policy kind, then N ascending or K descending). Groups where nothing fits
    are left out."""
    best: dict[Candidate, CandidateEstimate] = {}
    for e in estimates:
        if not _fits(e, usable):
            continue
        key = replace(e.candidate, checkpointing="none")
        if key not in best or _recompute_key(e.candidate) < _recompute_key(best[key].candidate):
            best[key] = e
    return best


def _recompute_key(candidate: Candidate) -> tuple[int, int]:
    policy = candidate.policy
    size = policy.size or 0
    return policy.recomputation, -size if policy.kind == "chunk" else size


def _fits(estimate: CandidateEstimate, usable: int) -> bool:
    return estimate.memory.total <= usable
