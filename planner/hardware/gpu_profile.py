"""GPU (and CPU) hardware profiles: the data the planner needs about a target device.
Profiles are JSON files in `profiles/gpus/`, each citing its source."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuProfile:
    name: str  # key, e.g. "v100-32gb"
    display_name: str  # e.g. "NVIDIA V100-SXM2 32GB"
    memory_bytes: int  # total device memory
    fp32_tflops: float  # peak dense throughput
    fp16_tflops: float  # peak dense tensor-core throughput
    bf16_tflops: float | None  # None: the GPU has no bf16
    bandwidth_gbps: float  # memory bandwidth, GB/s
    source: str  # where the figures come from (URL or document)
    hourly_usd: float | None = None  # on-demand price, optional
    cuda_context_bytes: int | None = None  # None: use the planner's default constant
    workspace_bytes: int | None = None  # cuBLAS/cuDNN workspace; None: planner default
    kind: str = "gpu"  # "gpu" or "cpu"
    price_source: str | None = None  # where (and when) hourly_usd comes from
    nvml_match: tuple[str, ...] = ()  # words of NVML device names that map to this profile
    compute_capability: str | None = None  # e.g. "8.0"; None: inferred (bf16 => >= 8.0, else 7.x)
    host_link: str | None = None  # link to host memory (profiles/host_links.json); None: the table's default
    host_link_gbps: float | None = None  # measured GB/s per direction, overrides the link type's nominal rate
    host_link_source: str | None = None  # where host_link_gbps comes from (required with it)

    @property
    def supports_bf16(self) -> bool:
        return self.bf16_tflops is not None

    @property
    def capability(self) -> tuple[int, int]:
        """CUDA compute capability; without the field, (8, 0) for GPUs with bf16 (every
        bf16 GPU is Ampere or later) and (7, 0) otherwise."""
        if self.compute_capability:
            major, _, minor = self.compute_capability.partition(".")
            return int(major), int(minor or 0)
        return (8, 0) if self.supports_bf16 else (7, 0)
