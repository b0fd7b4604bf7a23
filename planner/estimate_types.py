"""What the planner says about one candidate: memory by category and time per step.
Plain data; `planner.estimate` computes them, `planner.choose` ranks them."""

from __future__ import annotations

from dataclasses import dataclass, fields

from planner.candidate import Candidate


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per rank of a training step, by category. `None` where a category does not
    apply (no DDP on one GPU, no NCCL without communication).

    Which `torch.cuda` statistic each number is (docs/planner.md):
      allocated_peak   max_memory_allocated(): every live block at the step's peak,
                       the cuBLAS/cuDNN workspaces the caching allocator hands out included
      needed_capacity  the smallest per-process capacity (set_per_process_memory_fraction
                       x device memory) at which the step runs without an OOM: the
                       allocator releases its cache and retries (num_alloc_retries)
      reserved_peak    max_memory_reserved() on a GPU with room to spare (no release)
      total            needed_capacity + what lives outside the allocator: decides "fits"
    """

    parameters: int
    gradients: int
    optimizer_state: int
    activations: int  # live activations (and temporaries) at the allocated peak
    workspace: int  # cuBLAS / cuDNN workspaces live at the allocated peak (caching-allocator blocks)
    allocator_slack: int  # needed capacity - allocated peak (rounding, fragmentation)
    context: int  # CUDA context (not seen by PyTorch's allocator)
    ddp: int | None = None  # DDP gradient buckets
    nccl: int | None = None  # NCCL communicator buffers
    source: str = "estimated"  # "estimated" | "measured"
    calibration: str | None = None  # which calibration file/constants were used
    reserved_slack: int | None = None  # unconstrained reserved - allocated peak (None: allocator_slack)
    cache_releases_per_step: int = 0  # cache releases (retries) per steady-state step at the needed capacity
    host_pinned: int = 0  # pinned host memory the offloaded activations hold at their peak (end of forward)

    @property
    def allocated_peak(self) -> int:
        """What `torch.cuda.max_memory_allocated` would report."""
        return self.parameters + self.gradients + self.optimizer_state + self.activations + self.workspace

    @property
    def needed_capacity(self) -> int:
        """The smallest capacity the caching allocator can run the step in."""
        return self.allocated_peak + self.allocator_slack

    @property
    def reserved_peak(self) -> int:
        """What `torch.cuda.max_memory_reserved` would report on a GPU with room to spare."""
        return self.allocated_peak + (self.allocator_slack if self.reserved_slack is None else self.reserved_slack)

    @property
    def total(self) -> int:
        """The verdict's number: the needed capacity plus the device memory outside the
        caching allocator (what NVML would show for the process at that capacity)."""
        return self.needed_capacity + self.context + (self.ddp or 0) + (self.nccl or 0)

    def as_dict(self) -> dict[str, int | str | None]:
        out: dict[str, int | str | None] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["allocated_peak"] = self.allocated_peak
        out["needed_capacity"] = self.needed_capacity
        out["reserved_peak"] = self.reserved_peak
        out["total"] = self.total
        return out


@dataclass(frozen=True)
class TimeEstimate:
    flops_per_step: float  # FLOPs of one optimizer step on one rank (recomputation included)
    seconds_per_step: float  # one optimizer step (all accumulation micro-steps) on one rank
    seconds_per_epoch: float  # for the dataset size the estimate was made for
    videos_per_epoch: int
    cost_per_epoch_usd: float | None = None  # where the profile has a price
    host_transfer_seconds: float = 0.0  # per step, in seconds_per_step: offload copies, both ways, not overlapped


@dataclass(frozen=True)
class CandidateEstimate:
    candidate: Candidate
    memory: MemoryEstimate
    time: TimeEstimate | None
