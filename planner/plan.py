"""A plan: what the planner decided (the chosen candidate, every ranked candidate with its
estimate and the reason it was not chosen) and what it was made for (`PlanScope`), with
the lookups the trainer needs (`Plan.entry_for`, `Plan.next_smaller`). plan.json, its
file, is `planner.plan_file`."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timezone

from planner.candidate import Candidate
from planner.choose import Ranking
from planner.estimate_types import CandidateEstimate, MemoryEstimate, TimeEstimate
from planner.hardware.gpu_profile import GpuProfile


@dataclass(frozen=True)
class Hardware:
    name: str
    display_name: str
    memory_bytes: int
    kind: str = "gpu"
    detected: bool = False  # True: read from NVML on this machine; False: a profile by name


def hardware_of(profile: GpuProfile, detected: bool = False) -> Hardware:
    """The plan's record of the hardware `profile` describes."""
    return Hardware(profile.name, profile.display_name, profile.memory_bytes, profile.kind, detected)


@dataclass(frozen=True)
class Measurement:
    """A candidate run for real (planner.measure_finalists)."""

    oom: bool
    max_allocated_bytes: int | None = None
    max_reserved_bytes: int | None = None
    nvml_used_bytes: int | None = None
    step_seconds: float | None = None
    device: str | None = None
    error: str | None = None
    needed_bytes: int | None = None  # smallest capacity without OOM (set_per_process_memory_fraction bisection)
    alloc_retries: int | None = None  # torch.cuda.memory_stats()["num_alloc_retries"] over the run
    context_bytes: int | None = None  # NVML used after CUDA init minus before


@dataclass(frozen=True)
class PlanEntry:
    rank: int
    candidate: Candidate
    memory: MemoryEstimate
    time: TimeEstimate | None
    fits: bool
    reason: str | None
    quality_tier: int
    quality: str  # one line: what its quality rank rests on (Quality.summary)
    paper_avg_map: float | None = None  # Quality.reported_score (the name is plan.json's)
    measured: Measurement | None = None

    @property
    def total_bytes(self) -> int:
        return self.memory.total

    @property
    def estimate(self) -> CandidateEstimate:
        return CandidateEstimate(self.candidate, self.memory, self.time)


@dataclass(frozen=True)
class PlanScope:
    """What a plan (or a report of a ranking) is made for: the hardware, the world, the
    memory budget and the epoch."""

    hardware: Hardware
    gpus: int
    nodes: int
    margin: float
    usable_bytes: int
    global_batch: int
    videos_per_epoch: int
    dataset: str  # where videos_per_epoch comes from


@dataclass(frozen=True)
class Plan:
    scope: PlanScope
    chosen: Candidate
    memory: MemoryEstimate  # the chosen candidate's estimate
    time: TimeEstimate | None
    why: str
    candidates: tuple[PlanEntry, ...]
    notices: tuple[str, ...] = ()
    created: str = ""

    def entry_for(self, candidate: Candidate) -> PlanEntry | None:
        """The plan's entry of `candidate`; None when the plan does not rank it."""
        return next((entry for entry in self.candidates if entry.candidate == candidate), None)

    def next_smaller(self, failed: Candidate, tried: Collection[Candidate] = ()) -> PlanEntry | None:
        """What to train after `failed` ran out of memory despite the plan: the first
        entry in rank order (best first) that fits, was not tried, is estimated below
        `failed` and trains the same model (backbone and head: the weights trained so far
        carry over); None when there is none."""
        failed_entry = self.entry_for(failed)
        for entry in sorted(self.candidates, key=lambda e: e.rank):
            if entry.candidate == failed or entry.candidate in tried or not entry.fits:
                continue
            if failed_entry is not None and entry.total_bytes >= failed_entry.total_bytes:
                continue
            if (entry.candidate.backbone, entry.candidate.head) != (failed.backbone, failed.head):
                continue
            return entry
        return None


def plan_from_ranking(
    ranking: Ranking,
    profile: GpuProfile,
    *,
    margin: float,
    global_batch: int,
    videos_per_epoch: int,
    dataset: str,
    detected: bool = False,
    notices: tuple[str, ...] = (),
    measured: dict[int, Measurement] | None = None,
) -> Plan:
    """A Plan from a Ranking that has a chosen candidate; `measured` maps rank -> result."""
    if ranking.chosen is None or ranking.why is None:
        raise ValueError("a plan needs a chosen candidate")
    entries = entries_from_ranking(ranking, measured)
    chosen = ranking.chosen
    scope = PlanScope(
        hardware=hardware_of(profile, detected),
        gpus=chosen.candidate.gpus,
        nodes=chosen.candidate.nodes,
        margin=margin,
        usable_bytes=ranking.usable_bytes,
        global_batch=global_batch,
        videos_per_epoch=videos_per_epoch,
        dataset=dataset,
    )
    return Plan(
        scope=scope,
        chosen=chosen.candidate,
        memory=chosen.estimate.memory,
        time=chosen.estimate.time,
        why=ranking.why,
        candidates=entries,
        notices=notices,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def entries_from_ranking(ranking: Ranking, measured: dict[int, Measurement] | None = None) -> tuple[PlanEntry, ...]:
    """Plan entries for every ranked candidate (also when nothing fits, for the report)."""
    measured = measured or {}
    return tuple(
        PlanEntry(
            rank=r.rank,
            candidate=r.candidate,
            memory=r.estimate.memory,
            time=r.estimate.time,
            fits=r.fits,
            reason=r.reason,
            quality_tier=r.quality.tier,
            quality=r.quality.summary(),
            paper_avg_map=r.quality.reported_score,
            measured=measured.get(r.rank),
        )
        for r in ranking.ranked
    )
