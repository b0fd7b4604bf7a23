"""Memory and time of candidates: trace, synthesize, replay, add what the allocator does
not see.

For each fidelity a candidate trains at (one, or a C-LoFi cycle's three):
  1. traces of one training step at batch sizes 2 and 3 (`planner.trace`, cached on disk
     by `planner.trace_cache`; missing ones traced in worker processes), extrapolated to
     the candidate's batch size (`synthesis.extrapolate`: sizes are affine in the batch)
     and, for chunked checkpointing, with the skipped chunks filled in (`expand_periods`);
  2. the steady state: two optimizer steps of up to two micro-batches, so optimizer state
     exists and accumulated gradients persist (`synthesis.steady_state`);
  3. replayed through the CUDA caching-allocator model (`planner.allocator`; plain on the
     cpu profile): allocated and reserved peaks, bytes by category at the allocated peak;
  4. plus CUDA context, cuBLAS/cuDNN workspaces, DDP buckets and NCCL buffers
     (`planner.overheads`), and time from the traced FLOPs (`planner.timing`).
A cycle's memory is its largest member's; its time is the members' mean.
Per-rank memory does not depend on the number of GPUs except through accumulation and
the DDP/NCCL terms, and not on the GPU except through the constants, so traces serve
every target.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

import torch

from planner.allocator import ReplayResult, replay
from planner.candidate import Candidate
from planner.estimates import CandidateEstimate, MemoryEstimate, TimeEstimate
from planner.hardware import GpuProfile
from planner.overheads import Overheads, context_bytes, ddp_bytes, load_overheads, nccl_bytes, workspace_bytes
from planner.synthesis import StructureMismatch, expand_periods, expanded_flops, extrapolate, steady_state, with_repeats
from planner.timing import ACTIVITYNET_TRAINING_VIDEOS, mean_time, time_estimate
from planner.trace import ACTIVATION, GRADIENT, INPUT, OPTIMIZER_STATE, PARAMETER, STUB, Trace, Tracer
from planner.trace_cache import TraceCache, trace_key
from planner.workload import StepSpec, Workload, step_specs

REPEAT_CAP = 6  # more repeated periods than this: replay at 4 and 6 and extrapolate
TRACE_BATCHES = (2, 3)  # traced batch sizes; others are extrapolated (batch 1 too: no batch-1 special cases)
WORKERS_ENV = "LOFI_PLAN_WORKERS"
PARALLEL_MIN_TRACES = 8  # fewer missing traces than this: trace in-process

Progress = Callable[[int, int], None]


def estimate_candidate(
    candidate: Candidate,
    workload: Workload,
    profile: GpuProfile,
    *,
    videos_per_epoch: int = ACTIVITYNET_TRAINING_VIDEOS,
    cache: TraceCache | None = None,
) -> CandidateEstimate:
    return estimate_grid([candidate], workload, profile, videos_per_epoch=videos_per_epoch, cache=cache, workers=1)[0]


def estimate_grid(
    candidates: Sequence[Candidate],
    workload: Workload,
    profile: GpuProfile,
    *,
    videos_per_epoch: int = ACTIVITYNET_TRAINING_VIDEOS,
    cache: TraceCache | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
    overheads: Overheads | None = None,
) -> list[CandidateEstimate]:
    """Estimates in the order of `candidates`. `cache=None`: the on-disk default cache.
    `workers`: processes tracing missing traces (None: $LOFI_PLAN_WORKERS or up to 2)."""
    overheads = overheads or load_overheads()
    store = TraceStore(workload, cache if cache is not None else TraceCache.default())
    target = "cpu" if profile.kind == "cpu" else "cuda"
    steps = {c: step_specs(c, target) for c in candidates}
    needed = sorted({(s.canonical(), b) for specs in steps.values() for s in specs for b in TRACE_BATCHES},
                    key=lambda job: (job[0].model.label, job[0].precision, job[1]))
    missing = [job for job in needed if store.cached(*job) is None]
    total = len(missing) + len(candidates)
    report = progress or (lambda done, all_: None)
    report(0, total)
    store.trace_all(missing, workers=_workers(workers, len(missing)), progress=lambda n: report(n, total))
    kind = "plain" if target == "cpu" else "cuda"
    results = []
    for done, candidate in enumerate(candidates, start=1):
        members = [_member(store, s, candidate, kind, profile, overheads, videos_per_epoch) for s in steps[candidate]]
        memory = max((m for m, _ in members), key=lambda m: m.total)
        timing = members[0][1] if len(members) == 1 else mean_time([t for _, t in members])
        results.append(CandidateEstimate(candidate=candidate, memory=memory, time=timing))
        report(len(missing) + done, total)
    return results


def _member(store, step, candidate, kind, profile, overheads, videos) -> tuple[MemoryEstimate, TimeEstimate | None]:
    step = step.canonical()
    grad_bytes = store.at_batch(step, candidate.batch_per_gpu).grad_bytes
    outside = {
        "workspace": workspace_bytes(profile, overheads),
        "context": context_bytes(profile, overheads),
        "ddp": ddp_bytes(grad_bytes, candidate.world_size, overheads),
        "nccl": nccl_bytes(candidate.world_size, overheads),
    }
    # What the caching allocator may hold on this device before cudaMalloc fails.
    capacity = max(profile.memory_bytes - sum(v or 0 for v in outside.values()), 0)
    result, flops = store.replayed(step, candidate.batch_per_gpu, candidate.accumulation, kind, capacity)
    by = result.peak_by_category
    memory = MemoryEstimate(
        parameters=by[PARAMETER],
        gradients=by[GRADIENT],
        optimizer_state=by[OPTIMIZER_STATE],
        activations=by[ACTIVATION] + by[INPUT] + by[STUB],
        allocator_slack=result.reserved_peak - result.allocated_peak,
        source="estimated",
        calibration=overheads.label,
        **outside,
    )
    return memory, time_estimate(flops, candidate, profile, overheads, videos)


class TraceStore:
    """Traces of one workload: the cache first, else traced (grouped by model, so each
    model is built once), and their allocator replays, memoized."""

    def __init__(self, workload: Workload, cache: TraceCache) -> None:
        self.workload = workload
        self.cache = cache
        self._tracer: Tracer | None = None
        self._replays: dict[tuple, tuple[ReplayResult, float]] = {}
        self._at_batch: dict[tuple[StepSpec, int], Trace] = {}

    def cached(self, step: StepSpec, batch: int) -> Trace | None:
        return self.cache.get(trace_key(self.workload.key, step, batch))

    def trace(self, step: StepSpec, batch: int) -> Trace:
        found = self.cached(step, batch)
        if found is None:
            if self._tracer is None:
                self._tracer = Tracer(self.workload)
            found = self._tracer.trace(step, batch)
            self.cache.put(trace_key(self.workload.key, step, batch), found)
        return found

    def trace_all(self, jobs: list[tuple[StepSpec, int]], *, workers: int, progress: Callable[[int], None]) -> None:
        groups: dict[object, list[tuple[StepSpec, int]]] = defaultdict(list)
        for step, batch in jobs:
            groups[step.model].append((step, batch))
        done = 0
        if workers <= 1:
            for group in groups.values():
                for step, batch in group:
                    self.trace(step, batch)
                    done += 1
                    progress(done)
            return
        context = multiprocessing.get_context("spawn")
        try:
            with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init) as pool:
                futures = [pool.submit(_trace_group, self.workload, group) for group in groups.values()]
                for future in as_completed(futures):
                    for (step, batch), trace in future.result():
                        self.cache.put(trace_key(self.workload.key, step, batch), trace)
                        done += 1
                    progress(done)
        except BrokenProcessPool:  # a worker died (killed, out of memory): finish here
            left = [job for job in jobs if self.cached(*job) is None]
            self.trace_all(left, workers=1, progress=lambda n: progress(done + n))

    def at_batch(self, step: StepSpec, batch: int) -> Trace:
        """The trace at `batch`: extrapolated from the traced batch sizes, or traced."""
        key = (step, batch)
        if key not in self._at_batch:
            first, second = (self.trace(step, b) for b in TRACE_BATCHES)
            try:
                trace = extrapolate(first, second, batch)
            except StructureMismatch:
                trace = self.trace(step, batch)
            self._at_batch = {key: trace}  # keep one: traces are large
        return self._at_batch[key]

    def replayed(self, step: StepSpec, batch: int, accumulation: int, kind: str, capacity: int | None) -> tuple[ReplayResult, float]:
        """(allocator result, FLOPs per micro-batch) of the steady state."""
        key = (step, batch, min(accumulation, 2), kind, capacity)
        if key not in self._replays:
            trace = self.at_batch(step, batch)
            self._replays[key] = (replay_steady(trace, accumulation, kind, capacity), expanded_flops(trace))
        return self._replays[key]


def replay_steady(trace: Trace, accumulation: int, kind: str, capacity: int | None) -> ReplayResult:
    """The allocator over the steady state of `trace`. Hundreds of repeated periods (a
    chunked encoder at batch 16) would make a stream of millions of events, but each
    period leaves almost nothing behind, so the peaks are affine in the number of periods:
    replay with REPEAT_CAP - 2 and REPEAT_CAP and extrapolate; near the capacity, where
    the allocator starts releasing its cache, replay exactly."""

    def run(t: Trace) -> ReplayResult:
        return replay(*steady_state(expand_periods(t), accumulation).lists(), kind=kind, capacity=capacity)

    repeats = trace.repeats
    if repeats <= REPEAT_CAP:
        return run(trace)
    low, high = REPEAT_CAP - 2, REPEAT_CAP
    a, b = run(with_repeats(trace, low)), run(with_repeats(trace, high))
    if b.released or b.oom:
        return run(trace)
    t = (repeats - low) / (high - low)

    def affine(x: int, y: int) -> int:
        return round(x + (y - x) * t)

    allocated = affine(a.allocated_peak, b.allocated_peak)
    if capacity is not None and allocated > capacity:
        return run(trace)
    return ReplayResult(
        allocated_peak=allocated,
        reserved_peak=max(affine(a.reserved_peak, b.reserved_peak), allocated),
        peak_by_category=tuple(affine(x, y) for x, y in zip(a.peak_by_category, b.peak_by_category)),
        peak_event=-1,
        segments=affine(a.segments, b.segments),
    )


def _workers(requested: int | None, missing: int) -> int:
    if requested is None:
        env = os.environ.get(WORKERS_ENV)
        requested = int(env) if env and env.isdigit() else min(2, os.cpu_count() or 1)
    if missing < PARALLEL_MIN_TRACES or not _spawnable():
        return 1
    return requested


def _spawnable() -> bool:
    """Spawned workers re-import __main__: impossible from stdin or an interactive shell."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return path is not None and os.path.isfile(path)


def _worker_init() -> None:
    torch.set_num_threads(1)


def _trace_group(workload: Workload, group: list[tuple[StepSpec, int]]) -> list[tuple[tuple[StepSpec, int], Trace]]:
    tracer = Tracer(workload)
    return [((step, batch), tracer.trace(step, batch)) for step, batch in group]
