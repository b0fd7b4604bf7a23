"""What the planner says about one candidate: memory by category and time per step.
Plain data; `planner.estimate` computes them, `planner.choose` ranks them."""

from __future__ import annotations

from dataclasses import dataclass, fields

from planner.candidate import Candidate


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per rank at the peak of a training step, by category. `None` where a
    category does not apply (no DDP on one GPU, no NCCL without communication)."""

    parameters: int
    gradients: int
    optimizer_state: int
    activations: int  # live activations (and temporaries) at the allocated peak
    workspace: int  # cuBLAS / cuDNN workspaces
    allocator_slack: int  # reserved - allocated at the peak (rounding, fragmentation)
    context: int  # CUDA context (not seen by PyTorch's allocator)
    ddp: int | None = None  # DDP gradient buckets
    nccl: int | None = None  # NCCL communicator buffers
    source: str = "estimated"  # "estimated" | "measured"
    calibration: str | None = None  # which calibration file/constants were used

    @property
    def allocated_peak(self) -> int:
        """What `torch.cuda.max_memory_allocated` would report."""
        return self.parameters + self.gradients + self.optimizer_state + self.activations

    @property
    def reserved_peak(self) -> int:
        """What `torch.cuda.max_memory_reserved` would report."""
        return self.allocated_peak + self.allocator_slack

    @property
    def total(self) -> int:
        """Everything the process holds on the device (what NVML shows for it)."""
        return (
            self.reserved_peak
            + self.workspace
            + self.context
            + (self.ddp or 0)
            + (self.nccl or 0)
        )

    def as_dict(self) -> dict[str, int | str | None]:
        out: dict[str, int | str | None] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["total"] = self.total
        return out


@dataclass(frozen=True)
class TimeEstimate:
    flops_per_step: float  # FLOPs of one optimizer step on one rank (recomputation included)
    seconds_per_step: float  # one optimizer step (all accumulation micro-steps) on one rank
    seconds_per_epoch: float  # for the dataset size the estimate was made for
    videos_per_epoch: int
    cost_per_epoch_usd: float | None = None  # where the profile has a price


@dataclass(frozen=True)
class CandidateEstimate:
    candidate: Candidate
    memory: MemoryEstimate
    time: TimeEstimate | None
