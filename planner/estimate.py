"""Memory and time of candidates: trace, synthesize, replay, add what the allocator does
not see.

For each fidelity a candidate trains at (one, or each member of its cycle):
  1. traces of one training step at batch sizes 2 and 3 (`planner.tracing.step`, cached on disk
     by `planner.tracing.cache`; missing ones traced in worker processes), extrapolated to
     the candidate's batch size (`synthesis.extrapolate`: sizes are affine in the batch)
     and, for chunked checkpointing, with the skipped chunks filled in (`expand_periods`);
  2. the steady state: two optimizer steps of up to two micro-batches, so optimizer state
     exists and accumulated gradients persist (`synthesis.steady_state`);
  3. with the cuBLAS/cuDNN workspaces the caching allocator hands out
     (`synthesis.with_workspaces`), replayed through the CUDA caching-allocator model
     (`planner.cost.allocator`; plain on the cpu profile): the allocated peak and bytes by
     category there, the reserved peak on a GPU with room to spare, and the needed
     capacity, bisected with the allocator's release-and-retry path
     (`planner.cost.replay.needed_capacity`), with the cache releases per step it costs there;
  4. plus CUDA context, DDP buckets and NCCL buffers (`planner.cost.overheads`), and time
     from the traced FLOPs (`planner.cost.timing`), with the host copies of activation
     offload (`Trace.host_sizes`, the host link of `planner.hardware.host_links`) and the pinned
     host memory they hold (`MemoryEstimate.host_pinned`).
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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from planner.cost.allocator import ReplayResult
from planner.cost.replay import needed_capacity, replay
from planner import checkpointing
from planner.candidate import Candidate
from planner.choose import DEFAULT_MARGIN, usable_bytes
from planner.estimate_types import CandidateEstimate, MemoryEstimate, TimeEstimate
from planner.hardware.gpu_profile import GpuProfile
from planner.cost.overheads import Overheads, Workspaces, context_bytes, ddp_bytes, load_overheads, nccl_bytes, workspaces
from planner.tracing.synthesis import (StructureMismatch, expand_periods, expanded_flops, extrapolate, steady_state, with_repeats,
                               with_state, with_workspaces)
from planner.hardware.host_links import host_link
from planner.cost.timing import mean_time, offload_seconds, time_estimate
from planner.tracing.recorder import ACTIVATION, GRADIENT, INPUT, OPTIMIZER_STATE, PARAMETER, STUB, WORKSPACE, Trace
from planner.tracing.step import Tracer
from planner.tracing.cache import TraceCache, trace_key
from planner.workload import ModelSpec, StepSpec, Workload, step_specs

REPEAT_CAP = 2  # more repeated periods than this: replay at 1 and 2 and extrapolate
TRACE_BATCHES = (2, 3)  # traced batch sizes; others are extrapolated (batch 1 too: no batch-1 special cases)
WORKERS_ENV = "LOFI_PLAN_WORKERS"
PARALLEL_MIN_GROUPS = 4  # fewer model specs than this: work in-process

Progress = Callable[[int, int], None]


def estimate_candidate(
    candidate: Candidate,
    workload: Workload,
    profile: GpuProfile,
    *,
    videos_per_epoch: int,
    cache: TraceCache | None = None,
) -> CandidateEstimate:
    return estimate_grid([candidate], workload, profile, videos_per_epoch=videos_per_epoch, cache=cache, workers=1)[0]


def estimate_grid(
    candidates: Sequence[Candidate],
    workload: Workload,
    profile: GpuProfile,
    *,
    videos_per_epoch: int,
    cache: TraceCache | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
    overheads: Overheads | None = None,
    margin: float = DEFAULT_MARGIN,
) -> list[CandidateEstimate]:
    """Estimates in the order of `candidates`. `cache=None`: the on-disk default cache.
    `margin`: the fit margin the plan will use (where the needed capacity must be exact).
    `workers`: processes that trace and replay, one model spec at a time (None:
    $LOFI_PLAN_WORKERS, else up to 2; an in-memory cache is used in-process only)."""
    overheads = overheads or load_overheads()
    cache = cache if cache is not None else TraceCache.default()
    target = "cpu" if profile.kind == "cpu" else "cuda"
    kind = "plain" if target == "cpu" else "cuda"
    members = {c: [s.canonical() for s in step_specs(c, target)] for c in candidates}
    groups: dict[object, set[Request]] = defaultdict(set)
    for c, steps in members.items():
        for s in steps:
            groups[s.model.traced].add(Request(s, c.batch_per_gpu, min(c.accumulation, 2), c.expandable_segments,
                                               c.world_size))
    total = sum(len(g) for g in groups.values()) + len(candidates)
    report = progress or (lambda done, all_: None)
    report(0, total)
    jobs = [sorted(g, key=lambda r: (r.step.precision, r.step.optimizer, r.batch, r.accumulation, r.expandable))
            for g in sorted(groups.values(), key=_cost, reverse=True)]
    results: dict[Request, Replayed] = {}
    # Worker processes trace and replay; with every trace cached the replays (a bisection
    # each) still pay for them on a large grid.
    count = _workers(workers, len(jobs)) if cache.root is not None else 1
    usable = usable_bytes(profile, margin)
    for done in _run_groups(jobs, workload, cache, profile, overheads, kind, count, usable):
        results.update(done)
        report(len(results), total)
    estimates = []
    for n, c in enumerate(candidates, start=1):
        member = [_member(results[Request(s, c.batch_per_gpu, min(c.accumulation, 2), c.expandable_segments,
                                          c.world_size)], c, profile,
                          overheads, videos_per_epoch) for s in members[c]]
        memory = max((m for m, _ in member), key=lambda m: m.total)
        timing = member[0][1] if len(member) == 1 else mean_time([t for _, t in member])
        estimates.append(CandidateEstimate(candidate=c, memory=memory, time=timing))
        report(len(results) + n, total)
    return estimates


@dataclass(frozen=True)
class Request:
    """The allocator over a step at a batch size, with or without accumulated gradients,
    with or without expandable segments."""

    step: StepSpec
    batch: int
    accumulation: int  # 1, or 2 standing for any number >= 2
    expandable: bool = False
    world_size: int = 1  # where the verdict falls (DDP and NCCL memory) decides how exactly to bisect


@dataclass(frozen=True)
class StepMemory:
    """The allocator's view of a steady-state step."""

    free: ReplayResult  # unlimited replay: allocated peak, categories, unconstrained reserved peak
    needed: int  # the smallest capacity without an OOM
    releases_per_step: int  # cache releases in the last step at that capacity


@dataclass(frozen=True)
class Replayed:
    memory: StepMemory
    flops: float  # per micro-batch
    grad_bytes: tuple[int, ...]
    host_sizes: tuple[int, ...] = ()  # saved tensors offloaded to the host per micro-batch (bytes each)


def _member(done: Replayed, candidate, profile, overheads, videos) -> tuple[MemoryEstimate, TimeEstimate | None]:
    step = done.memory
    by = step.free.peak_by_category
    memory = MemoryEstimate(
        parameters=by[PARAMETER],
        gradients=by[GRADIENT],
        optimizer_state=by[OPTIMIZER_STATE],
        activations=by[ACTIVATION] + by[INPUT] + by[STUB],
        workspace=by[WORKSPACE],
        allocator_slack=step.needed - step.free.allocated_peak,
        reserved_slack=step.free.reserved_peak - step.free.allocated_peak,
        cache_releases_per_step=step.releases_per_step,
        source="estimated",
        calibration=overheads.label,
        host_pinned=sum(pinned_block(size) for size in done.host_sizes),
        **_outside(profile, overheads, done.grad_bytes, candidate.world_size),
    )
    transfer = offload_seconds(sum(done.host_sizes), host_link(profile)) if done.host_sizes else 0.0
    return memory, time_estimate(done.flops, candidate, profile, overheads, videos, transfer)


def pinned_block(nbytes: int) -> int:
    """Pinned host bytes held for one offloaded tensor: PyTorch's caching host allocator
    rounds every request up to a power of two (ATen/core/CachingHostAllocator.h,
    `pinned_max_round_threshold` unset) and keeps the blocks for the next step."""
    return 1 << (nbytes - 1).bit_length() if nbytes > 0 else 0


def _outside(profile, overheads, grad_bytes, world_size) -> dict[str, int | None]:
    """Device memory outside PyTorch's caching allocator."""
    return {
        "context": context_bytes(profile, overheads),
        "ddp": ddp_bytes(grad_bytes, world_size, overheads),
        "nccl": nccl_bytes(world_size, overheads),
    }


def estimate_group(requests, store, profile, overheads, kind, usable: int) -> dict[Request, Replayed]:
    """Replays of one model spec's requests (traces from `store`: cache, else traced).
    The needed capacity is bisected to 32 MiB where it decides the fit, between what the
    allocator may hold of the `usable` bytes (all but the context and DDP/NCCL) and
    that plus DDP/NCCL; elsewhere to 1 % (`planner.cost.replay.needed_capacity`)."""
    out = {}
    spaces = workspaces(profile, overheads)
    for r in requests:
        trace = store.at_batch(r.step, r.batch)
        outside = sum(v or 0 for v in _outside(profile, overheads, trace.grad_bytes, r.world_size).values())
        verdict = (usable - outside, usable - context_bytes(profile, overheads))
        memory = store.step_memory(r.step, r.batch, r.accumulation, kind, spaces, r.expandable, verdict)
        out[r] = Replayed(memory, expanded_flops(trace), trace.grad_bytes, trace.host_sizes)
    return out


def _run_groups(jobs, workload, cache, profile, overheads, kind, workers, usable):
    if workers <= 1:
        store = TraceStore(workload, cache)
        for job in jobs:
            yield estimate_group(job, store, profile, overheads, kind, usable)
        return
    finished: set[int] = set()
    try:
        with _pool(workers) as pool:
            futures = {pool.submit(_group_in_worker, job, workload, cache.root, profile, overheads, kind, usable): n
                       for n, job in enumerate(jobs)}
            for future in as_completed(futures):
                result = future.result()
                finished.add(futures[future])
                yield result
    except BrokenProcessPool:  # a worker died (killed, out of memory): finish here
        _SHARED.pop(workers, None)
        store = TraceStore(workload, cache)
        for n, job in enumerate(jobs):
            if n not in finished:
                yield estimate_group(job, store, profile, overheads, kind, usable)


_SHARED: dict[int, ProcessPoolExecutor] = {}  # worker pools kept by `shared_workers`, by size
_SHARING = False


@contextmanager
def shared_workers() -> Iterator[None]:
    """Inside the block, every `estimate_grid` call with worker processes uses one pool
    of each size (started by the first such call, shut down at the end), instead of
    starting its own: a search that estimates in rounds (planner.search) pays for
    spawning workers (importing torch, building models) once."""
    global _SHARING
    if _SHARING:
        yield
        return
    _SHARING = True
    try:
        yield
    finally:
        _SHARING = False
        while _SHARED:
            _SHARED.popitem()[1].shutdown()


@contextmanager
def _pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A pool of `workers` spawned processes: the shared one inside `shared_workers`,
    else one for this call."""
    if not _SHARING:
        with _spawn_pool(workers) as pool:
            yield pool
        return
    if workers not in _SHARED:
        _SHARED[workers] = _spawn_pool(workers)
    yield _SHARED[workers]


def _spawn_pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init)


def _group_in_worker(job, workload, root, profile, overheads, kind, usable):
    return estimate_group(job, TraceStore(workload, TraceCache(root)), profile, overheads, kind, usable)


def _cost(group: set[Request]) -> float:
    """Rough tracing + replay cost, to start the heaviest groups first."""
    step = next(iter(group)).step
    return len(group) * (4.0 if checkpointing.parse(step.model.checkpointing).kind == "chunk" else 1.0) * step.model.fidelity.tr


class TraceStore:
    """Traces of one workload: the cache first, else traced (grouped by model, so each
    model is built once), and their allocator replays, memoized."""

    def __init__(self, workload: Workload, cache: TraceCache) -> None:
        self.workload = workload
        self.cache = cache
        self._tracer: Tracer | None = None
        self._replays: dict[tuple, StepMemory] = {}
        self._extra: dict[ModelSpec, tuple[int, ...]] = {}
        self._at_batch: dict[tuple[StepSpec, int], Trace] = {}

    def cached(self, step: StepSpec, batch: int) -> Trace | None:
        return self.cache.get(trace_key(self.workload.key, step, batch))

    def trace(self, step: StepSpec, batch: int) -> Trace:
        step = step.traced()
        found = self.cached(step, batch)
        if found is None:
            if self._tracer is None:
                self._tracer = Tracer(self.workload)
            found = self._tracer.trace(step, batch)
            self.cache.put(trace_key(self.workload.key, step, batch), found)
        return found

    def at_batch(self, step: StepSpec, batch: int) -> Trace:
        """The trace at `batch`: extrapolated from the traced batch sizes, or traced."""
        key = (step, batch)
        if key not in self._at_batch:
            first, second = (self.trace(step, b) for b in TRACE_BATCHES)
            try:
                trace = extrapolate(first, second, batch)
            except StructureMismatch:
                trace = self.trace(step, batch)
            trace = with_state(trace, self.extra_state(step.model))
            self._at_batch = {key: trace}  # keep one: traces are large
        return self._at_batch[key]

    def extra_state(self, spec: ModelSpec) -> tuple[int, ...]:
        """Bytes of each parameter or buffer the model of `spec` holds beyond the traced
        model (`ModelSpec.traced`): a cycle's state for its other members."""
        if not spec.cycle:
            return ()
        if spec not in self._extra:
            def sizes(model_spec: ModelSpec) -> dict[str, int]:
                model = self.workload.build_model(model_spec, torch.device("meta"))
                named = [*model.named_parameters(), *model.named_buffers()]
                return {name: t.untyped_storage().nbytes() for name, t in named}

            full, traced = sizes(spec), sizes(spec.traced)
            self._extra[spec] = tuple(n for name, n in full.items() if traced.get(name) != n)
        return self._extra[spec]

    def step_memory(self, step: StepSpec, batch: int, accumulation: int, kind: str, spaces: Workspaces,
                    expandable: bool = False, verdict: tuple[int, int] | None = None) -> StepMemory:
        """The unlimited replay of the steady state at `batch` and its needed capacity
        (memoized: GPU counts with the same workspaces share them)."""
        key = (step, batch, min(accumulation, 2), kind, spaces, expandable, verdict)
        if key not in self._replays:
            self._replays[key] = step_memory(self.at_batch(step, batch), accumulation, kind, spaces, expandable,
                                             verdict)
        return self._replays[key]


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


def _workers(requested: int | None, groups: int) -> int:
    if requested is None:
        env = os.environ.get(WORKERS_ENV)
        requested = int(env) if env and env.isdigit() else min(2, os.cpu_count() or 1)
    if groups < PARALLEL_MIN_GROUPS or not _spawnable():
        return 1
    return requested


def _spawnable() -> bool:
    """Spawned workers re-import __main__: impossible from stdin or an interactive shell."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return path is not None and os.path.isfile(path)


def _worker_init() -> None:
    torch.set_num_threads(1)
