"""Time per step and per epoch: FLOPs of the traced step (torch.utils.flop_counter's
matmul/convolution counts, recomputation included) divided by the GPU's sustained
throughput for the precision (peak from its profile x an efficiency constant from
profiles/overheads.json, calibrated later on real GPUs).

Sustained throughput (FLOP/s), after the estimate_mfu habit of nanoGPT (a model's FLOPs
over the hardware's peak):
    fp32   max(fp32 peak x eff_fp32, TF32 peak x eff_tf32) -- TF32 (compute capability
           >= 8.0) is half the FP16 tensor peak on A100/H100/L4/RTX 30-40, and cuDNN
           convolutions use it by default (torch.backends.cudnn.allow_tf32)
    fp16   fp16 peak x eff_amp (eff_amp_ampere from compute capability 8.0)
    bf16   bf16 peak x eff_amp_ampere (None where the GPU has no bf16)
    cpu    the profile's fp32 figure x eff_cpu

Activation offload adds its copies: the bytes offloaded per micro-batch go to the host
in forward and come back in backward, each way at the host link's rate per direction
(`planner.hardware.host_links`), assumed not to overlap with compute: an upper bound on the
step's time as far as the copies go.

Not modelled: data loading and video decoding (assumed to keep up), DDP's all-reduce
(assumed overlapped with backward), optimizer and elementwise work (not counted as
FLOPs; the efficiency constants absorb them for ResNet-like models).
"""

from __future__ import annotations

import math

from planner.candidate import Candidate
from planner.estimate_types import TimeEstimate
from planner.hardware.gpu_profile import GpuProfile
from planner.hardware.host_links import HostLink
from planner.cost.overheads import Overheads


def sustained_flops(profile: GpuProfile, precision: str, overheads: Overheads) -> float | None:
    """FLOP/s one device sustains in training at `precision`; None if it cannot run it."""
    if profile.kind == "cpu":
        return profile.fp32_tflops * 1e12 * overheads.efficiency_cpu.value
    ampere = profile.capability >= (8, 0)
    if precision == "fp32":
        rate = profile.fp32_tflops * overheads.efficiency_fp32.value
        if ampere:
            rate = max(rate, profile.fp16_tflops / 2 * overheads.efficiency_tf32.value)
        return rate * 1e12
    if precision == "fp16":
        eff = overheads.efficiency_amp_ampere if ampere else overheads.efficiency_amp
        return profile.fp16_tflops * eff.value * 1e12
    if precision == "bf16":
        if profile.bf16_tflops is None:
            return None
        return profile.bf16_tflops * overheads.efficiency_amp_ampere.value * 1e12
    raise ValueError(f"unknown precision {precision!r}")


def time_estimate(
    flops_per_micro_batch: float,
    candidate: Candidate,
    profile: GpuProfile,
    overheads: Overheads,
    videos_per_epoch: int,
    transfer_seconds_per_micro_batch: float = 0.0,
) -> TimeEstimate | None:
    """One optimizer step = `accumulation` micro-batches per rank, all ranks in parallel;
    an epoch = ceil(videos / global batch) steps. Cost: every GPU of the run is paid.
    `transfer_seconds_per_micro_batch`: host copies of offloaded activations (both ways),
    added without overlap (`offload_seconds`)."""
    if videos_per_epoch < 1:
        raise ValueError(f"videos per epoch must be >= 1, got {videos_per_epoch}")
    rate = sustained_flops(profile, candidate.precision, overheads)
    if rate is None:
        return None
    flops_per_step = flops_per_micro_batch * candidate.accumulation
    transfer = transfer_seconds_per_micro_batch * candidate.accumulation
    seconds_per_step = flops_per_step / rate + transfer
    steps = math.ceil(videos_per_epoch / candidate.global_batch)
    seconds_per_epoch = steps * seconds_per_step
    cost = None
    if profile.hourly_usd is not None:
        cost = seconds_per_epoch / 3600.0 * profile.hourly_usd * candidate.world_size
    return TimeEstimate(
        flops_per_step=flops_per_step,
        seconds_per_step=seconds_per_step,
        seconds_per_epoch=seconds_per_epoch,
        videos_per_epoch=videos_per_epoch,
        cost_per_epoch_usd=cost,
        host_transfer_seconds=transfer,
    )


def offload_seconds(host_bytes: int, link: HostLink) -> float:
    """Seconds one micro-batch's offloaded activations spend on the host link: `host_bytes`
    to the host in forward and the same back in backward, one direction at a time."""
    return 2 * link.seconds(host_bytes)


def mean_time(estimates: list[TimeEstimate | None]) -> TimeEstimate | None:
    """A cycle spends equal time at each member fidelity: the mean of its steps."""
    if not estimates or any(e is None for e in estimates):
        return None
    n = len(estimates)
    costs = [e.cost_per_epoch_usd for e in estimates]  # type: ignore[union-attr]
    return TimeEstimate(
        flops_per_step=sum(e.flops_per_step for e in estimates) / n,  # type: ignore[union-attr]
        seconds_per_step=sum(e.seconds_per_step for e in estimates) / n,  # type: ignore[union-attr]
        seconds_per_epoch=sum(e.seconds_per_epoch for e in estimates) / n,  # type: ignore[union-attr]
        videos_per_epoch=estimates[0].videos_per_epoch,  # type: ignore[union-attr]
        cost_per_epoch_usd=None if any(c is None for c in costs) else sum(costs) / n,  # type: ignore[arg-type]
        host_transfer_seconds=sum(e.host_transfer_seconds for e in estimates) / n,  # type: ignore[union-attr]
    )
