"""A candidate training configuration: what the planner estimates, ranks and writes
into plan.json, and what the trainer consumes."""

from __future__ import annotations

from dataclasses import dataclass

from planner import checkpointing as checkpointing_policy
from planner.checkpointing import Checkpointing
from planner.fidelity import Fidelity

PRECISIONS = ("fp32", "fp16", "bf16")
OPTIMIZERS = ("sgd", "sgd_momentum", "adam")  # sgd: momentum 0 -> no optimizer state
BATCHNORM = ("frozen", "trained", "partial")  # statistics fixed; trained with the batch; only the first layer trained, other affines fixed (partial BN)


@dataclass(frozen=True)
class Candidate:
    """One training configuration. Exactly one of `fidelity` and `cycle` is set: a cycle
    trains at each member fidelity in turn, so its memory is the max of its members."""

    backbone: str  # one of the workload's backbones (planner.axes.WorkloadAxes)
    head: str  # one of the workload's heads
    batch_per_gpu: int
    fidelity: Fidelity | None = None
    cycle: tuple[Fidelity, ...] | None = None
    gpus: int = 1  # GPUs per node
    nodes: int = 1
    accumulation: int = 1  # gradient-accumulation steps per optimizer step
    precision: str = "fp32"
    checkpointing: str = "none"  # as written (plan.json); `policy` is it parsed
    optimizer: str = "sgd"
    expandable_segments: bool = False  # PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
    batchnorm: str = "frozen"  # BATCHNORM

    def __post_init__(self) -> None:
        if (self.fidelity is None) == (self.cycle is None):
            raise ValueError("a candidate has exactly one of fidelity and cycle")
        if self.cycle is not None and len(self.cycle) == 0:
            raise ValueError("a cycle needs at least one fidelity")
        for name in ("batch_per_gpu", "gpus", "nodes", "accumulation"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.batchnorm not in BATCHNORM:
            raise ValueError(f"batchnorm must be one of {BATCHNORM}, got {self.batchnorm!r}")
        checkpointing_policy.parse(self.checkpointing)

    @property
    def policy(self) -> Checkpointing:
        """The checkpointing policy, parsed."""
        return checkpointing_policy.parse(self.checkpointing)

    @property
    def fidelities(self) -> tuple[Fidelity, ...]:
        """The fidelities this candidate trains at (one, or the members of its cycle)."""
        return self.cycle if self.cycle is not None else (self.fidelity,)  # type: ignore[return-value]

    @property
    def alloc_conf(self) -> str | None:
        """The PYTORCH_CUDA_ALLOC_CONF this candidate trains with (None: PyTorch's default)."""
        return "expandable_segments:True" if self.expandable_segments else None

    @property
    def world_size(self) -> int:
        return self.gpus * self.nodes

    @property
    def global_batch(self) -> int:
        return self.batch_per_gpu * self.world_size * self.accumulation
