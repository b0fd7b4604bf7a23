"""Memory PyTorch's allocator does not see, and the throughput constants of the time
estimate: each a value with its source, from profiles/overheads.json (later refined by
measurements on a real GPU, the calibration issue).

    context  CUDA context and lazily loaded kernels (per process)
    ddp      the data-parallel gradient averaging's flat bucket (world size > 1)
    nccl     NCCL communicator buffers (world size > 1)

and the sizes of the workspaces PyTorch takes from its caching allocator (cuBLAS per
handle and stream, the cuDNN convolution workspace), which the replay allocates
(`workspaces`, `planner.tracing.synthesis.with_workspaces`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

from planner.cost.allocator import CachingAllocatorModel
from planner.errors import ProfileError
from planner.hardware.gpu_profile import GpuProfile
from planner.strict_json import Node, read_json_document


@dataclass(frozen=True)
class Constant:
    value: float
    source: str


@dataclass(frozen=True)
class Overheads:
    version: int
    calibration: str | None  # the measured calibration these constants come from, if any
    cuda_context_bytes: Constant
    cublas_workspace_bytes: Constant
    cublas_workspace_bytes_sm90: Constant
    cublas_handles: Constant
    cudnn_workspace_bytes: Constant
    ddp_bucket_cap_bytes: Constant
    nccl_buffer_bytes_per_connection: Constant
    nccl_channels: Constant
    nccl_connections_per_channel: Constant
    nccl_fixed_bytes: Constant
    efficiency_fp32: Constant
    efficiency_tf32: Constant
    efficiency_amp: Constant
    efficiency_amp_ampere: Constant
    efficiency_cpu: Constant

    @property
    def label(self) -> str:
        """Which constants an estimate used (goes into MemoryEstimate.calibration)."""
        base = f"overheads.json v{self.version}"
        return f"{base}, calibrated: {self.calibration}" if self.calibration else f"{base}, uncalibrated"


_CONSTANTS = tuple(f.name for f in fields(Overheads) if f.name not in ("version", "calibration"))


def default_path() -> Path:
    from planner.hardware.profiles import profiles_dir

    return profiles_dir() / "overheads.json"


def load_overheads(path: Path | None = None) -> Overheads:
    """Read and validate overheads.json (unknown or missing keys are errors)."""
    return _load(str(path if path is not None else default_path()))


@lru_cache(maxsize=8)
def _load(path: str) -> Overheads:
    root = Node(read_json_document(path, ProfileError, "overheads file"), path, error=ProfileError)
    known = ("version", "calibration", *_CONSTANTS)
    root.fields(known, known)
    constants = {}
    for name in _CONSTANTS:
        entry = root.obj(name)
        entry.fields(("value", "source"), ("value", "source"))
        value = entry.get("value")
        if not isinstance(value, (int, float)) or (not isinstance(value, bool) and value < 0):
            raise entry.fail("value", f"must be a number >= 0 (or a boolean), got {value!r}")
        source = entry.str("source")
        if not source.strip():
            raise entry.fail("source", "must name where the value comes from")
        constants[name] = Constant(value, source)
    return Overheads(version=root.int("version"), calibration=root.str("calibration", optional=True), **constants)


def context_bytes(profile: GpuProfile, overheads: Overheads) -> int:
    if profile.cuda_context_bytes is not None:
        return profile.cuda_context_bytes
    return 0 if profile.kind == "cpu" else int(overheads.cuda_context_bytes.value)


# Compute-capability majors whose default cuBLAS workspace is 4096 KiB x 8 = 32 MiB:
# Hopper and Blackwell (CublasHandlePool.cpp parseChosenWorkspaceSize, PyTorch 2.6 and
# later: `major == 9 || major == 10 || major == 12`; earlier 2.x: exactly sm 9.0, the
# same for the GPUs profiled here). Ada (8.9) and everything else: :4096:2:16:8.
CUBLAS_32MIB_MAJORS = (9, 10, 12)


@dataclass(frozen=True)
class Workspaces:
    """Workspaces the caching allocator hands out on a target."""

    cublas: tuple[int, ...]  # one block per cuBLAS (handle, stream), kept for the process's life
    cudnn: int  # one block per convolution call, freed when it returns


def workspaces(profile: GpuProfile, overheads: Overheads) -> Workspaces:
    """cuBLAS: one workspace per (handle, stream); handles are per thread, so the
    training thread (forward) and autograd's device thread (backward) each get one.
    cuBLASLt shares the cuBLAS workspace of its handle and stream by default
    (TORCH_CUBLASLT_UNIFIED_WORKSPACE unset), so it adds none. A profile's
    `workspace_bytes` replaces both by one block of that size."""
    if profile.kind == "cpu":
        return Workspaces((), 0)
    if profile.workspace_bytes is not None:
        return Workspaces((profile.workspace_bytes,) if profile.workspace_bytes else (), 0)
    large = profile.capability[0] in CUBLAS_32MIB_MAJORS
    per_handle = overheads.cublas_workspace_bytes_sm90 if large else overheads.cublas_workspace_bytes
    handles = int(overheads.cublas_handles.value)
    return Workspaces((int(per_handle.value),) * handles, int(overheads.cudnn_workspace_bytes.value))


def workspace_bytes(profile: GpuProfile, overheads: Overheads) -> int:
    """All workspaces at once: the cuBLAS ones plus one cuDNN convolution workspace."""
    found = workspaces(profile, overheads)
    return sum(found.cublas) + found.cudnn


def ddp_bytes(grad_bytes: tuple[int, ...], world_size: int, overheads: Overheads) -> int | None:
    """The trainer's data-parallel gradient averaging (after backward, once the ranks
    agreed that none ran out of memory): gradients in parameter order are packed into
    flat buckets of at most the cap (a gradient larger than the cap is a bucket of its
    own), all-reduced one bucket at a time and copied back, so one flat bucket lives at a
    time: the largest, as the allocator model rounds it. None on one process."""
    if world_size <= 1:
        return None
    allocator = CachingAllocatorModel()
    allocator.malloc(largest_bucket(grad_bytes, int(overheads.ddp_bucket_cap_bytes.value)))
    return allocator.reserved


def largest_bucket(grad_bytes: tuple[int, ...], cap: int) -> int:
    """The largest flat bucket when gradients of these sizes, in order, are packed into
    buckets of at most `cap` bytes (a new bucket starts when the next gradient would
    overflow the current one)."""
    largest = current = 0
    for nbytes in grad_bytes:
        if current and current + nbytes > cap:
            largest, current = max(largest, current), 0
        current += nbytes
    return max(largest, current)


def nccl_bytes(world_size: int, overheads: Overheads) -> int | None:
    """One communicator (DDP's process group): channels x connections x the three
    protocols' buffers, plus fixed state. None on one process."""
    if world_size <= 1:
        return None
    buffers = overheads.nccl_channels.value * overheads.nccl_connections_per_channel.value
    return int(buffers * overheads.nccl_buffer_bytes_per_connection.value + overheads.nccl_fixed_bytes.value)
