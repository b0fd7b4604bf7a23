"""Memory side of the checkpointing benchmark: the planner's estimated peak activation
memory of each checkpointing policy against `none`, for tsm_r18 + G-TAD at T-LoFi
(25 snippets x 224^2), per-GPU batch 1 and 2. Target (models issue): `chunk` keeps at
least 4x less activation memory than `none`.

    python benchmarks/checkpointing_memory.py [--backbone tsm_r18] [--precision fp32]
        [--policies none,block,chunk:4] [--batches 1,2]

Estimated on fake tensors (no GPU needed): activations = live activations and
temporaries at the allocated peak of a training step (parameters, gradients and
optimizer state excluded); FLOPs include the recomputation.
"""

from __future__ import annotations

import argparse

from lofi.fidelities import T_LOFI
from lofi.plan_axes import LOFI_AXES
from lofi.plan_workload import lofi_workload
from planner.candidate import Candidate
from planner.estimate import estimate_grid
from planner.hardware.profiles import get_profile

MiB = 1 << 20
TARGET = 4.0  # chunk: at least 4x less activation memory than none


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tsm_r18")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--policies", default="none,block,chunk:4")
    parser.add_argument("--batches", default="1,2")
    parser.add_argument("--gpu", default="v100-32gb")
    args = parser.parse_args()
    report(args.backbone, args.precision, args.policies.split(","), [int(b) for b in args.batches.split(",")], args.gpu)


def report(backbone: str, precision: str, policies: list[str], batches: list[int], gpu: str = "v100-32gb") -> None:
    """Print the estimated activation memory of each policy and batch against `none`."""
    candidates = [
        Candidate(backbone, "gtad", batch, fidelity=T_LOFI, precision=precision, checkpointing=policy)
        for batch in batches
        for policy in policies
    ]
    estimates = {(e.candidate.batch_per_gpu, e.candidate.checkpointing): e
                 for e in estimate_grid(candidates, lofi_workload(), get_profile(gpu),
                                          videos_per_epoch=LOFI_AXES.videos_per_epoch)}
    print(f"{backbone} + G-TAD, T-LoFi {T_LOFI.label()}, {precision}: estimated peak activation memory")
    print(f"{'batch':>5} {'policy':>9} {'activations':>12} {'vs none':>8} {'allocated':>10} {'total':>9} {'TFLOP/step':>10}")
    worst = None
    for batch in batches:
        none = estimates[(batch, "none")].memory.activations if "none" in policies else None
        for policy in policies:
            e = estimates[(batch, policy)]
            ratio = none / e.memory.activations if none else None
            if policy.startswith("chunk") and ratio is not None:
                worst = ratio if worst is None else min(worst, ratio)
            print(f"{batch:>5} {policy:>9} {e.memory.activations / MiB:>9.0f} MiB "
                  f"{(f'{ratio:.1f}x' if ratio else '-'):>8} {e.memory.allocated_peak / MiB:>6.0f} MiB "
                  f"{e.memory.total / MiB:>5.0f} MiB {e.time.flops_per_step / 1e12:>10.2f}")
    if worst is not None:
        verdict = "meets" if worst >= TARGET else "misses"
        print(f"chunk vs none: {worst:.1f}x less activation memory (target >= {TARGET:.0f}x): {verdict} the target")


if __name__ == "__main__":
    main()
