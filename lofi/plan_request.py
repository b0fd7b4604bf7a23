"""What `lofi plan` asks of the planner for LoFi: the dataset size (a count, the training
subset of an annotation file, or ActivityNet's), the LoFi workload traced over the grid,
and, with `--measure`, its finalists run for real by `python -m lofi.measure_step`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lofi.errors import OptionError
from lofi.plan_axes import ACTIVITYNET_DATASET, ACTIVITYNET_TRAINING_VIDEOS
from planner.choose import Ranking
from planner.errors import PlannerError
from planner.grid import GridSpec
from planner.hardware.nvml import Target
from planner.plan import Measurement, Plan
from planner.planning import PlanRequest, estimate_and_rank, measure_and_rerank, plan_from_request

ACTIVITYNET_SOURCE = f"{ACTIVITYNET_DATASET}; --videos or --annotations to change"
OTHER_GPU = "--gpu NAME plans for another"  # said where no GPU is seen and a default profile is planned for
MEASURE_COMMAND = (sys.executable, "-m", "lofi.measure_step")


@dataclass(frozen=True)
class PlanOutcome:
    request: PlanRequest
    ranking: Ranking
    plan: Plan | None  # None: nothing fits (planner.planning.plan_from_request raises NothingFits)


def dataset_size(videos: int | None, annotations: Path | None) -> tuple[int, str]:
    """(training videos per epoch, where that number comes from)."""
    if videos is not None and annotations is not None:
        raise OptionError("give --videos or --annotations, not both")
    if videos is not None:
        if videos < 1:
            raise OptionError(f"--videos must be >= 1, got {videos}")
        return videos, "--videos"
    if annotations is not None:
        from lofi.data.annotations import load_annotations

        count = len(load_annotations(annotations, subsets=["training"]).records)
        if count == 0:
            raise OptionError(f"{annotations}: no video in the training subset")
        return count, f"the training subset of {annotations}"
    return ACTIVITYNET_TRAINING_VIDEOS, ACTIVITYNET_SOURCE


def plan_request(spec: GridSpec, target: Target, *, margin: float, videos: int | None, annotations: Path | None,
                 max_epoch_hours: float | None) -> PlanRequest:
    """The planner's request for the grid `spec` on `target` and the dataset given."""
    videos_per_epoch, dataset = dataset_size(videos, annotations)
    return PlanRequest(spec, target.profile, margin=margin, videos_per_epoch=videos_per_epoch, dataset=dataset,
                       detected=target.detected, notices=target.notices,
                       max_seconds_per_epoch=None if max_epoch_hours is None else max_epoch_hours * 3600)


def check_measurable(target: Target, gpu_name: str) -> None:
    """`--measure` runs candidates on the GPU here: there must be one, and the plan for it."""
    if not target.detected:
        reason = target.detection.reason if target.detection is not None else f"--gpu {gpu_name} names a profile"
        raise PlannerError(f"--measure needs a GPU here and --gpu auto ({reason})")


def plan_lofi(
    request: PlanRequest,
    *,
    measure: bool = False,
    progress: Callable[[int, int], None] | None = None,
    on_measured: Callable[..., None] | None = None,
) -> PlanOutcome:
    """Trace the LoFi workload over the grid and rank it; with `measure`, run the
    finalists for real and rank again. `plan` is None when nothing fits."""
    from lofi.plan_workload import lofi_workload

    estimates, ranking = estimate_and_rank(request, lofi_workload(), progress=progress)
    if ranking.chosen is None:
        return PlanOutcome(request, ranking, None)
    measured: dict[int, Measurement] = {}
    if measure:
        ranking, measured = measure_and_rerank(request, ranking, estimates, MEASURE_COMMAND, on_result=on_measured)
    return PlanOutcome(request, ranking, plan_from_request(request, ranking, measured))
