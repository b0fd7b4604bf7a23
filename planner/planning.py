"""The planning procedure shared by the plan command and automatic training: estimate every
candidate of a grid on a target, rank them, measure the finalists and rank again
(`--measure`), and turn the ranking into a Plan."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from planner.candidate import Candidate
from planner.choose import Ranking, rank_candidates, require_choice, usable_bytes
from planner.estimate import estimate_grid, shared_workers
from planner.estimate_types import CandidateEstimate
from planner.grid import GridSpec, build_grid
from planner.hardware.gpu_profile import GpuProfile
from planner.hardware.host_links import host_link
from planner.measure_finalists import measure_candidates
from planner.plan import Measurement, Plan, plan_from_ranking
from planner.search import search_blocks, search_offload
from planner.tracing.cache import TraceCache
from planner.workload import Workload

MEASURE_FINALISTS = 3  # measuring runs the chosen candidate and the next two that fit


@dataclass(frozen=True)
class PlanRequest:
    """What to plan. `videos_per_epoch` and `dataset` left None take the dataset of the
    workload's axes (`spec.axes`)."""

    spec: GridSpec
    profile: GpuProfile
    margin: float = 0.10
    videos_per_epoch: int = None  # type: ignore[assignment]
    dataset: str = None  # type: ignore[assignment]
    detected: bool = False  # the profile was read from NVML on this machine
    notices: tuple[str, ...] = ()
    max_seconds_per_epoch: float | None = None  # time budget; None: no limit

    def __post_init__(self) -> None:
        if self.videos_per_epoch is None:
            object.__setattr__(self, "videos_per_epoch", self.spec.axes.videos_per_epoch)
        if self.dataset is None:
            object.__setattr__(self, "dataset", self.spec.axes.dataset)


def estimate_and_rank(
    request: PlanRequest,
    workload: Workload,
    *,
    progress: Callable[[int, int], None] | None = None,
    oom: Sequence[Candidate] = (),
) -> tuple[list[CandidateEstimate], Ranking]:
    """Estimate the grid of `request` on its target and rank the candidates."""
    candidates = build_grid(request.spec, request.profile)
    estimates = estimate_searched(candidates, request, workload, progress=progress)
    return estimates, rank(request, estimates, oom=oom)


def rank(request: PlanRequest, estimates: Sequence[CandidateEstimate], *, oom: Sequence[Candidate] = ()) -> Ranking:
    """Rank `estimates` on the request's budget (memory less the margin, time per epoch);
    candidates in `oom` ran out of memory when measured and do not fit."""
    return rank_candidates(estimates, usable_bytes(request.profile, request.margin), request.spec.axes,
                           oom=oom, max_seconds_per_epoch=request.max_seconds_per_epoch)


def measure_and_rerank(
    request: PlanRequest,
    ranking: Ranking,
    estimates: Sequence[CandidateEstimate],
    command: Sequence[str],
    *,
    finalists: int = MEASURE_FINALISTS,
    on_result: Callable[[Candidate, Measurement], None] | None = None,
) -> tuple[Ranking, dict[int, Measurement]]:
    """Run the first `finalists` fitting candidates for real (`command`, planner.measure_finalists),
    then rank again: those that ran out of memory stop fitting. Returns the new ranking
    and the measurements by their candidates' new ranks."""
    chosen = [r.candidate for r in ranking.ranked if r.fits][:finalists]
    results = measure_candidates(chosen, command, on_result=on_result)
    by_candidate = dict(zip(chosen, results))
    reranked = rank(request, estimates, oom=[c for c, m in by_candidate.items() if m.oom])
    measured = {r.rank: by_candidate[r.candidate] for r in reranked.ranked if r.candidate in by_candidate}
    return reranked, measured


def estimate_searched(
    candidates: Sequence[Candidate],
    request: PlanRequest,
    workload: Workload,
    *,
    progress: Callable[[int, int], None] | None = None,
    cache: TraceCache | None = None,
    workers: int | None = None,
) -> list[CandidateEstimate]:
    """Estimates of `candidates`, then (unless `request.spec.search_blocks` is off) of
    the `blocks:N` candidates the search estimated (`planner.search`)."""
    done = 0

    def estimate(batch: list[Candidate]) -> list[CandidateEstimate]:
        nonlocal done
        offset = done

        def advance(finished: int, total: int) -> None:
            if progress is not None:
                progress(offset + finished, offset + total)

        found = estimate_grid(batch, workload, request.profile, videos_per_epoch=request.videos_per_epoch,
                              progress=advance, margin=request.margin, cache=cache, workers=workers)
        done = offset + len(batch)
        return found

    with shared_workers():
        estimates = estimate(list(candidates))
        if request.spec.search_blocks:
            usable = usable_bytes(request.profile, request.margin)
            estimates += search_blocks(estimates, workload, usable, estimate)
            link = host_link(request.profile) if request.profile.kind != "cpu" else None
            estimates += search_offload(estimates, workload, usable, estimate, link=link)
    return estimates


def plan_from_request(request: PlanRequest, ranking: Ranking, measured=None) -> Plan:
    """The Plan of a ranking; raises NothingFits (exit code 3) when nothing fits."""
    require_choice(ranking, request.profile, request.spec)
    return plan_from_ranking(
        ranking, request.profile, margin=request.margin, global_batch=request.spec.global_batch,
        videos_per_epoch=request.videos_per_epoch, dataset=request.dataset, detected=request.detected,
        notices=request.notices, measured=measured,
    )


def make_plan(request: PlanRequest, workload: Workload, *, progress: Callable[[int, int], None] | None = None) -> Plan:
    """Estimate, rank and choose in one call (no measurement)."""
    _, ranking = estimate_and_rank(request, workload, progress=progress)
    return plan_from_request(request, ranking)
