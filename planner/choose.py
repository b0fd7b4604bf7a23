"""Fit, rank and choose (planner issue, "Choice").

- Fits: total bytes per rank (the needed capacity of the caching allocator plus what
  lives outside it) <= the GPU's memory x (1 - margin); margin default 10 %.
- Best: highest quality first (planner.quality), then candidates whose steady-state step
  runs without releasing the allocator's cache before those that must release it every
  step (cudaFree synchronizes: slower), then the fastest estimated time per video; ties
  go to the larger batch, less recomputation, half precision, fewer accumulation steps,
  the default allocator before expandable segments.
- Every candidate that is not chosen carries the reason: does not fit, slower, or lower
  fidelity. Nothing fits: NothingFits (exit code 3) with the smallest requirement and
  the levers that would help.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from planner import checkpointing
from planner.axes import WorkloadAxes
from planner.candidate import Candidate
from planner.errors import FieldError, NothingFitsError, PlannerError, Setting, field_setting
from planner.estimate_types import CandidateEstimate
from planner.grid import GridSpec
from planner.hardware.gpu_profile import GpuProfile
from planner.quality import Quality, config_key

DEFAULT_MARGIN = 0.10
GIB = 2**30
_PRECISION_ORDER = {"bf16": 0, "fp16": 1, "fp32": 2}  # half precision first where allowed


@dataclass(frozen=True)
class RankedCandidate:
    estimate: CandidateEstimate
    quality: Quality
    fits: bool
    reason: str | None  # None for the chosen candidate
    rank: int  # 1 = chosen (or, when nothing fits, the best-ranked)

    @property
    def candidate(self) -> Candidate:
        return self.estimate.candidate

    @property
    def total_bytes(self) -> int:
        return self.estimate.memory.total


@dataclass(frozen=True)
class Ranking:
    """All candidates, best first: the fitting ones in choice order, then the others."""

    ranked: tuple[RankedCandidate, ...]
    usable_bytes: int
    chosen: RankedCandidate | None
    why: str | None  # why the chosen one won


@dataclass(frozen=True)
class Lever:
    """What would shrink the requirement: `what`, pulled by setting `field` to `value`."""

    what: str  # 'half precision'
    field: str  # the GridSpec field (or option of the grid) that pulls it: 'precisions'
    value: str | None = None  # what to set it to: 'fp16, or bf16 where the GPU has it'
    after: str = ""  # text after the setting

    def render(self, setting: Setting = field_setting) -> str:
        return f"{self.what} ({setting(self.field, self.value)}){self.after}"

    def __str__(self) -> str:
        return self.render()


class NothingFits(NothingFitsError):
    """No candidate fits; carries the smallest requirement and the levers. The message is
    `summary`, then the levers (when they are `Lever`s, each rendered by `render`)."""

    def __init__(self, summary: str, smallest: CandidateEstimate, usable_bytes: int,
                 levers: tuple[Lever | str, ...], *, list_levers: bool = True):
        self.summary = summary
        self.list_levers = list_levers  # False: the summary already says them
        self.smallest = smallest
        self.usable_bytes = usable_bytes
        self.levers = levers
        super().__init__(self.render(field_setting))

    def render(self, setting: Setting) -> str:
        if not self.list_levers:
            return self.summary
        items = [lever.render(setting) if isinstance(lever, Lever) else lever for lever in self.levers]
        return f"{self.summary} Levers: {'; '.join(items)}"


def usable_bytes(profile: GpuProfile, margin: float = DEFAULT_MARGIN) -> int:
    if not 0.0 <= margin < 1.0:
        raise FieldError("margin", f"must be in [0, 1), got {margin}", separator=" ")
    return math.floor(profile.memory_bytes * (1.0 - margin))


def releasing(estimate: CandidateEstimate) -> bool:
    """The steady-state step releases the allocator's cache at the capacity it needs."""
    return estimate.memory.cache_releases_per_step > 0


def seconds_per_video(estimate: CandidateEstimate) -> float | None:
    """Wall time per training video: one optimizer step processes the global batch."""
    if estimate.time is None:
        return None
    return estimate.time.seconds_per_step / estimate.candidate.global_batch


def rank_candidates(
    estimates: Sequence[CandidateEstimate],
    usable: int,
    axes: WorkloadAxes,
    oom: Collection[Candidate] = (),
    max_seconds_per_epoch: float | None = None,
) -> Ranking:
    """Rank every estimate; candidates in `oom` ran out of memory when measured for real
    (`planning.measure_and_rerank`) and do not fit whatever their estimate says. With a time budget,
    candidates estimated slower than `max_seconds_per_epoch` do not fit either. The
    workload's `axes` rank the quality and name its cycles."""
    if not estimates:
        raise PlannerError("no candidates to rank")
    if max_seconds_per_epoch is not None and not max_seconds_per_epoch > 0:
        raise PlannerError(f"the time budget per epoch must be > 0, got {max_seconds_per_epoch}")
    qualities = axes.quality(e.candidate for e in estimates)
    quality = {id(e): qualities[config_key(e.candidate)] for e in estimates}

    def too_slow(e: CandidateEstimate) -> bool:
        return (max_seconds_per_epoch is not None and e.time is not None
                and e.time.seconds_per_epoch > max_seconds_per_epoch)

    fit = {id(e): e.memory.total <= usable and e.candidate not in oom and not too_slow(e) for e in estimates}
    fitting = sorted((e for e in estimates if fit[id(e)]),
                     key=lambda e: (quality[id(e)].tier, releasing(e), _speed_key(e)))
    failing = sorted((e for e in estimates if not fit[id(e)]), key=lambda e: (quality[id(e)].tier, e.memory.total))
    winner = fitting[0] if fitting else None
    ranked = []
    for rank, estimate in enumerate([*fitting, *failing], start=1):
        fits = fit[id(estimate)]
        if estimate is winner:
            reason = None
        elif estimate.candidate in oom:
            reason = f"does not fit: ran out of memory when measured (estimated {gib(estimate.memory.total)} GiB)"
        elif not fits and estimate.memory.total > usable:
            reason = f"does not fit: needs {gib(estimate.memory.total)} of {gib(usable)} GiB"
        elif not fits:
            reason = (f"too slow: {hours(estimate.time.seconds_per_epoch)} per epoch, "  # type: ignore[union-attr]
                      f"over the budget of {hours(max_seconds_per_epoch)}")  # type: ignore[arg-type]
        elif quality[id(estimate)].tier == quality[id(winner)].tier and releasing(estimate) and not releasing(winner):
            reason = (f"slower: releases the allocator's cache {estimate.memory.cache_releases_per_step} time(s) every "
                      f"step at the {gib(estimate.memory.needed_capacity)} GiB it needs")
        elif quality[id(estimate)].tier == quality[id(winner)].tier:
            reason = _slower(estimate, winner)
        else:
            reason = quality[id(estimate)].why_below(quality[id(winner)])
        ranked.append(RankedCandidate(estimate, quality[id(estimate)], fits, reason, rank))
    chosen = ranked[0] if winner is not None else None
    why = _why(chosen, ranked, usable, axes.cycle_label) if chosen is not None else None
    return Ranking(tuple(ranked), usable, chosen, why)


def require_choice(ranking: Ranking, profile: GpuProfile, spec: GridSpec | None = None) -> RankedCandidate:
    """The chosen candidate, or NothingFits with the smallest requirement and the levers."""
    if ranking.chosen is not None:
        return ranking.chosen
    label = spec.axes.cycle_label if spec is not None else "cycle"
    in_memory = [r for r in ranking.ranked if r.total_bytes <= ranking.usable_bytes and r.estimate.time is not None
                 and (r.reason or "").startswith("too slow")]
    if in_memory:
        fastest = min(in_memory, key=lambda r: r.estimate.time.seconds_per_epoch)  # type: ignore[union-attr]
        message = (f"nothing fits the time budget: every candidate that fits in memory is estimated slower "
                   f"({fastest.reason}); the fastest is {describe(fastest.candidate, label)}. Levers: a larger "
                   "budget, fewer epochs' worth of videos, smaller TR or SR")
        raise NothingFits(message, fastest.estimate, ranking.usable_bytes, ("a larger time budget",),
                          list_levers=False)
    smallest = min(ranking.ranked, key=lambda r: r.total_bytes).estimate
    found = levers(smallest.candidate, spec)
    summary = (
        f"nothing fits in {gib(ranking.usable_bytes)} GiB per GPU ({profile.name}, "
        f"{profile.memory_bytes / GIB:.0f} GiB less the margin): the smallest candidate, {describe(smallest.candidate, label)}, "
        f"needs {gib(smallest.memory.total)} GiB."
    )
    raise NothingFits(summary, smallest, ranking.usable_bytes, tuple(found))


def levers(smallest: Candidate, spec: GridSpec | None) -> list[Lever]:
    """What would shrink the requirement, from what the grid has not tried yet."""
    spec = spec or GridSpec(WorkloadAxes())
    found = []
    if not any(checkpointing.parse(p).enabled for p in spec.checkpointing):
        found.append(Lever("gradient checkpointing", "checkpointing", checkpointing.enabled_syntax()))
    if set(spec.precisions or ("fp32", "fp16")) == {"fp32"}:
        found.append(Lever("half precision", "precisions", "fp16, or bf16 where the GPU has it"))
    if not spec.accumulation:
        found.append(Lever("a smaller batch per GPU with gradient accumulation", "accumulation", "on"))
    elif min(spec.batches) > 1:
        found.append(Lever("a smaller batch per GPU", "batches", "1"))
    smallest_tr = min(f.tr for f in smallest.fidelities)
    smallest_sr = min(f.sr for f in smallest.fidelities)
    if smallest_tr > 1:
        found.append(Lever("fewer snippets", "tr", f"below {smallest_tr}"))
    if smallest_sr > 32:
        found.append(Lever("a smaller SR", "sr", f"below {smallest_sr}"))
    if not spec.accumulation:
        found.append(Lever("more GPUs", "gpus", after=", which splits the global batch"))
    return found


def describe(candidate: Candidate, cycle_label: str = "cycle") -> str:
    """One line: 'cycle 100/112+25/224+50/158 resnet18, batch 4x4, fp16, block' (a cycle
    named by `cycle_label`, the workload's `WorkloadAxes.cycle_label`)."""
    if candidate.cycle is not None:
        fidelity = f"{cycle_label} " + "+".join(f.label() for f in candidate.cycle)
    else:
        fidelity = candidate.fidelity.label()  # type: ignore[union-attr]
    batch = f"batch {candidate.batch_per_gpu}" + (f"x{candidate.accumulation}" if candidate.accumulation > 1 else "")
    text = (f"{fidelity} {candidate.backbone}, {batch}, {candidate.precision}, checkpointing {candidate.checkpointing}, "
            f"{candidate.optimizer}, BN {candidate.batchnorm}")
    return text + ", expandable segments" if candidate.expandable_segments else text


def gib(value: int | float) -> str:
    return f"{value / GIB:.1f}"


def hours(seconds: float) -> str:
    """A duration for reports: hours, minutes or seconds."""
    if seconds >= 360:
        return f"{seconds / 3600:.2f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _speed_key(estimate: CandidateEstimate) -> tuple:
    candidate = estimate.candidate
    per_video = seconds_per_video(estimate)
    return (
        per_video if per_video is not None else math.inf,
        -candidate.batch_per_gpu,
        candidate.policy.recomputation,
        _PRECISION_ORDER[candidate.precision],
        candidate.accumulation,
        candidate.expandable_segments,
        describe(candidate),
    )


def _slower(estimate: CandidateEstimate, winner: CandidateEstimate) -> str:
    mine, best = seconds_per_video(estimate), seconds_per_video(winner)
    if mine is not None and best is not None and mine > best:
        epoch, best_epoch = estimate.time.seconds_per_epoch, winner.time.seconds_per_epoch  # type: ignore[union-attr]
        return f"slower: {hours(epoch)} vs {hours(best_epoch)} per epoch"
    a, b = estimate.candidate, winner.candidate
    if a.batch_per_gpu != b.batch_per_gpu:
        return f"slower: smaller batch per GPU ({a.batch_per_gpu} vs {b.batch_per_gpu})"
    if a.checkpointing != b.checkpointing:
        return f"slower: more recomputation ({a.checkpointing} vs {b.checkpointing})"
    if a.precision != b.precision:
        return f"slower: {a.precision} vs {b.precision}"
    return "slower: same quality, ranked after the chosen one"


def _why(chosen: RankedCandidate, ranked: Sequence[RankedCandidate], usable: int, cycle_label: str) -> str:
    peers = sum(1 for r in ranked if r.fits and r.quality.tier == chosen.quality.tier)
    text = f"highest quality that fits ({chosen.quality.summary()})"
    text += f", fastest of {peers} fitting candidates of that quality" if peers > 1 else ""
    if releasing(chosen.estimate):
        text += (f"; its step releases the allocator's cache {chosen.estimate.memory.cache_releases_per_step} "
                 "time(s) per step at the memory it needs (slower), as does every other fitting one of its quality")
    better = [r for r in ranked if r.quality.tier < chosen.quality.tier]
    if better:
        closest = min(better, key=lambda r: r.total_bytes)
        text += (
            f"; every higher-quality candidate needs more than {gib(usable)} GiB "
            f"(the smallest: {describe(closest.candidate, cycle_label)}, {gib(closest.total_bytes)} GiB)"
        )
    return text
