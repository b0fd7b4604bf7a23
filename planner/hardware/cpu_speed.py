"""The sustained training throughput of this machine's CPU, measured in about a second.

The `cpu` profile's throughput is a conservative constant; when the target is the CPU
the planner runs on (training planned on a machine without a GPU), a measurement is better. We
time forward + backward of a 3x3 convolution at a size typical of a small encoder on
low-resolution frames, in the thread setting training will use, and count its FLOPs
(forward 2*Cin*Cout*9*H*W per image; backward twice that: input and weight grads)."""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from planner.hardware.gpu_profile import GpuProfile


def measure_cpu_tflops(seconds: float = 1.0, *, channels: int = 64, size: int = 32, batch: int = 16) -> float:
    """Sustained fp32 TFLOP/s of conv forward+backward on the CPU."""
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
    x = torch.randn(batch, channels, size, size, requires_grad=True)
    flops = 3 * 2 * channels * channels * 9 * size * size * batch  # forward + backward

    def step() -> None:
        conv(x).sum().backward()

    step()  # warm-up: allocation, kernel choice
    done, started = 0, time.perf_counter()
    while True:
        step()
        done += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and done >= 3:
            return flops * done / elapsed / 1e12


def with_measured_speed(profile: GpuProfile, seconds: float = 1.0) -> GpuProfile:
    """The cpu profile with its throughput replaced by a measurement of this machine."""
    if profile.kind != "cpu":
        return profile
    tflops = measure_cpu_tflops(seconds)
    return replace(
        profile,
        fp32_tflops=tflops,
        fp16_tflops=tflops,
        source=profile.source + f"; throughput measured here: {tflops * 1000:.0f} GFLOP/s (planner.hardware.cpu_speed)",
    )
