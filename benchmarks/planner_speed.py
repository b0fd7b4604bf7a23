"""How long the planner takes to estimate the whole default candidate grid for one target,
cold (empty trace cache: everything traced) and warm (traces on disk, a new process state),
the search for the smallest fitting blocks:N included (planner/search.py).

    python benchmarks/planner_speed.py [--gpu v100-32gb] [--gpus 1] [--workers N]

Prints the number of candidates and traces, and seconds for each run. The bar (planner
issue): under 60 s cold on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from lofi.plan_axes import LOFI_AXES
from lofi.plan_workload import lofi_workload
from planner.trace_store import TRACE_BATCHES
from planner.grid import GridSpec, build_grid
from planner.planning import PlanRequest, estimate_searched
from planner.hardware.profiles import get_profile
from planner.tracing.cache import TraceCache
from planner.workload import step_specs


def run(gpu: str, gpus: int, workers: int | None, cache_dir: Path, search: bool = True) -> list[float]:
    profile = get_profile(gpu)
    request = PlanRequest(GridSpec(LOFI_AXES, gpus=gpus, search_blocks=search), profile)
    candidates = build_grid(request.spec, profile)
    target = "cpu" if profile.kind == "cpu" else "cuda"
    traces = {(s.traced(), b) for c in candidates for s in step_specs(c, target) for b in TRACE_BATCHES}
    print(f"{gpu} x {gpus}: {len(candidates)} candidates, {len(traces)} traces at batch sizes {TRACE_BATCHES}")
    times = []
    for label in ("cold", "warm"):
        start, cpu = time.perf_counter(), _cpu_seconds()
        estimates = estimate_searched(candidates, request, lofi_workload(), cache=TraceCache(cache_dir), workers=workers)
        times.append(time.perf_counter() - start)
        fits = sum(e.memory.total <= profile.memory_bytes for e in estimates)
        searched = len(estimates) - len(candidates)
        specs = {(e.candidate.fidelity, e.candidate.backbone, e.candidate.checkpointing) for e in estimates[len(candidates):]}
        print(f"  search: {searched} blocks:N and offload candidates estimated ({len(specs)} new model specs)")
        print(f"  {label}: {times[-1]:.1f} s wall, {_cpu_seconds() - cpu:.1f} s CPU in this process and its workers "
              f"({fits} of {len(estimates)} within {profile.memory_bytes / 2**30:.0f} GiB); "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return times


def _cpu_seconds() -> float:
    """User + system CPU of this process and its finished children (the worker pool)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", default="v100-32gb")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--no-search", dest="search", action="store_false",
                        help="the grid's fixed policies only (the planner before the blocks:N search)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args.gpu, args.gpus, args.workers, Path(tmp), args.search)


if __name__ == "__main__":
    main()
