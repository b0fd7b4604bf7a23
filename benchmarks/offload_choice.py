"""Where the planner picks activation offload on a default grid, and why: for every
(fidelity, backbone, batch per GPU, precision) of the grid, the fastest policy that fits,
and a check that offload is that policy only where nothing faster fits.

    python benchmarks/offload_choice.py [--gpu v100-32gb] [--gpus 1]

Prints per policy how often it is the fastest that fits, how much slower offload is
where it fits and `none` does not, then each configuration where offload is the fastest: its estimated time per epoch, the share of it that is host copies (an upper
bound: no overlap with compute), the pinned host memory, and what the faster policies
need. Ends with the candidate `lofi plan` would choose. Exit code 1 if offload were the
fastest fitting policy anywhere a faster one fits (the ranking would be wrong).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict

from lofi.plan_axes import LOFI_AXES, describe
from lofi.plan_workload import lofi_workload
from planner.choose import rank_candidates, usable_bytes
from planner.estimate import estimate_grid
from planner.grid import CHECKPOINTING, GridSpec, build_grid
from planner.hardware.profiles import get_profile

GiB = 1 << 30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", default="v100-32gb")
    parser.add_argument("--gpus", type=int, default=1)
    args = parser.parse_args()
    profile = get_profile(args.gpu)
    # offload on every configuration (lofi plan probes it only where none does not fit)
    candidates = build_grid(GridSpec(LOFI_AXES, gpus=args.gpus, checkpointing=(*CHECKPOINTING, "offload")), profile)
    estimates = estimate_grid(candidates, lofi_workload(), profile, videos_per_epoch=LOFI_AXES.videos_per_epoch)
    usable = usable_bytes(profile)
    groups = defaultdict(list)
    for e in estimates:
        c = e.candidate
        groups[(c.fidelities, c.backbone, c.batch_per_gpu, c.precision)].append(e)
    wins: Counter[str] = Counter()
    wrong = 0
    slowdowns = []  # offload's time / the fastest fitting policy's, where offload fits and none does not
    print(f"{profile.name} x {args.gpus}: {len(estimates)} candidates, {len(groups)} configurations, "
          f"{usable / GiB:.1f} GiB usable")
    rows = []
    for key, members in groups.items():
        fitting = [e for e in members if e.memory.total <= usable and e.time is not None]
        if not fitting:
            continue
        best = min(fitting, key=lambda e: e.time.seconds_per_step)
        wins[best.candidate.checkpointing] += 1
        policies = {e.candidate.checkpointing: e for e in fitting}
        if "offload" in policies and "none" not in policies:
            offload = policies["offload"]
            slowdowns.append((offload.time.seconds_per_step / best.time.seconds_per_step,
                              offload.time.host_transfer_seconds / offload.time.seconds_per_step))
        if best.candidate.checkpointing != "offload":
            continue
        faster = [e for e in members if e.time is not None and e.time.seconds_per_step < best.time.seconds_per_step]
        wrong += sum(e.memory.total <= usable for e in faster)
        rows.append((best, faster))
    print("fastest fitting policy per configuration: " + ", ".join(f"{p} {n}" for p, n in wins.most_common()))
    if slowdowns:
        ratios = sorted(r for r, _ in slowdowns)
        shares = sorted(share for _, share in slowdowns)
        print(f"offload fits where none does not in {len(ratios)} configurations: its step takes "
              f"{ratios[0]:.2f}-{ratios[-1]:.2f}x (median {ratios[len(ratios) // 2]:.2f}x) the fastest fitting "
              f"policy's; host copies are {100 * shares[0]:.0f}-{100 * shares[-1]:.0f}% of its step")
    for best, faster in rows:
        t = best.time
        others = ", ".join(f"{e.candidate.checkpointing} {e.memory.total / GiB:.1f} GiB" for e in faster) or "-"
        print(f"  offload: {describe(best.candidate)}: {best.memory.total / GiB:.1f} GiB, "
              f"{t.seconds_per_epoch / 3600:.2f} h/epoch ({100 * t.host_transfer_seconds / t.seconds_per_step:.0f}% "
              f"host copies), pinned {best.memory.host_pinned / GiB:.1f} GiB; faster: {others}")
    chosen = rank_candidates(estimates, usable, LOFI_AXES).chosen
    print(f"chosen: {describe(chosen.candidate) if chosen else 'nothing fits'}")
    print("offload only where nothing faster fits: " + ("yes" if not wrong else f"NO ({wrong} faster fitting)"))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
