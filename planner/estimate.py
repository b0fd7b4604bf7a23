"""Memory and time of candidates: trace, synthesize, replay, add what the allocator does
not see.

For each fidelity a candidate trains at (one, or each member of its cycle):
  1. traces of one training step at batch sizes 2 and 3 (`planner.tracing.step`, cached
     on disk by `planner.tracing.cache`; missing ones traced in worker processes),
     extrapolated to the candidate's batch size (`planner.trace_store.TraceStore`: sizes
     are affine in the batch) and, for chunked checkpointing, with the skipped chunks
     filled in (`synthesis.expand_periods`);
  2. the steady state: two optimizer steps of up to two micro-batches, so optimizer state
     exists and accumulated gradients persist (`synthesis.steady_state`);
  3. with the cuBLAS/cuDNN workspaces the caching allocator hands out, replayed through
     the CUDA caching-allocator model (`planner.step_memory`; plain on the cpu profile):
     the allocated peak and bytes by category there, the reserved peak on a GPU with room
     to spare, and the needed capacity, bisected with the allocator's release-and-retry
     path (`planner.cost.replay.needed_capacity`), with the cache releases per step it
     costs there;
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

from planner import checkpointing
from planner.candidate import Candidate
from planner.choose import DEFAULT_MARGIN, usable_bytes
from planner.cost.overheads import Overheads, context_bytes, ddp_bytes, load_overheads, nccl_bytes, workspaces
from planner.cost.timing import mean_time, offload_seconds, time_estimate
from planner.estimate_types import CandidateEstimate, MemoryEstimate, TimeEstimate
from planner.hardware.gpu_profile import GpuProfile
from planner.hardware.host_links import host_link
from planner.step_memory import StepMemory
from planner.trace_store import TraceStore
from planner.tracing.cache import TraceCache
from planner.tracing.recorder import ACTIVATION, GRADIENT, INPUT, OPTIMIZER_STATE, PARAMETER, STUB, WORKSPACE
from planner.tracing.synthesis import expanded_flops
from planner.workload import StepSpec, Workload, step_specs

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
