"""What to do after a CUDA out-of-memory error despite the plan: move to the best-ranked
candidate of the plan that needs less memory than the one that failed."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from planner.candidate import Candidate
from planner.plan_file import PlanEntry


def next_candidate(
    entries: Sequence[PlanEntry], failed: Candidate, tried: Collection[Candidate] = ()
) -> PlanEntry | None:
    """The first entry, in plan order (best first), that fits, was not tried, and whose
    estimate is below the failed candidate's; None when there is none."""
    failed_bytes = next((e.total_bytes for e in entries if e.candidate == failed), None)
    for entry in sorted(entries, key=lambda e: e.rank):
        if entry.candidate == failed or entry.candidate in tried or not entry.fits:
            continue
        if failed_bytes is not None and entry.total_bytes >= failed_bytes:
            continue
        if entry.candidate.backbone != failed.backbone or entry.candidate.head != failed.head:
            continue  # the weights trained so far must carry over
        return entry
    return None
