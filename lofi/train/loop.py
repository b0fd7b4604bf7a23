"""What every training loop of lofi shares, and the collaborators of the LoFi stage's loop.

- the optimizer (the planner's builder, `planner.workload.build_optimizer`, so that what
  is planned is what is trained) and its step schedule;
- the random state a checkpoint stores and a resume restores;
- mixed precision by name: fp32, fp16 (autocast + GradScaler, e.g. V100) or bf16
  (autocast without a scaler, on GPUs that have it);
- graceful stop on SIGINT/SIGTERM, and the hooks a stage reports to and polls;
- the LoFi stage's batches of (video index, fidelity) pairs, following the C-LoFi
  schedule (PAPER.md), and `build_loop`, which makes the stage's optimizer, scheduler,
  scaler, sampler and loader in one place.

Gradient averaging over ranks is a collective and lives with the others
(`lofi.train.distributed.average_gradients`).
"""

from __future__ import annotations

import contextlib
import random
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from lofi.data.dataset import VideoDataset, collate_clips
from lofi.errors import OptionError
from lofi.train.config import OptimConfig, TrainConfig
from lofi.train.distributed import DistContext
from lofi.train.progress import StageProgress
from lofi.train.run_folder import MetricsLog
from planner.candidate import Candidate
from planner.fidelity import Fidelity
from planner.workload import build_optimizer

# --- optimizer, schedule, random state ------------------------------------------------


def make_optimizer(parameters: Iterable[nn.Parameter], recipe: OptimConfig) -> torch.optim.Optimizer:
    """The recipe's optimizer, built by the builder the planner traces."""
    return build_optimizer(parameters, recipe.name, lr=recipe.lr, momentum=recipe.momentum,
                           weight_decay=recipe.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: OptimConfig) -> torch.optim.lr_scheduler.StepLR:
    """lr x gamma every `step_epochs` epochs (stepped once per epoch)."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=recipe.step_epochs, gamma=recipe.gamma)


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state()[1].tolist(),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.asarray(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- mixed precision ------------------------------------------------------------------

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def autocast(device: torch.device, precision: str):
    """The autocast context for `precision` on `device` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in _DTYPES:
        raise OptionError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 (bf16 and fp32 need none); a disabled
    scaler passes losses and steps through unchanged, so the loop has one code path."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def check_precision(device: torch.device, precision: str) -> None:
    """fp16/bf16 need a GPU that supports them; the CPU trains in fp32."""
    if precision == "fp32":
        return
    if device.type != "cuda":
        raise OptionError(f"precision {precision} needs a CUDA GPU; the CPU trains in fp32")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise OptionError(f"{torch.cuda.get_device_name(device)} has no bf16; use fp16 or fp32")


# --- graceful stop --------------------------------------------------------------------


class StopRequest:
    """Installs SIGINT/SIGTERM handlers while active (`with StopRequest() as stop:`); the
    training loops poll `stop.requested` after every step, then checkpoint and return.
    A second signal of the same kind stops at once (a second Ctrl-C); a different one is
    taken as the same request (under torchrun, a terminal's SIGINT reaches the ranks,
    then torchrun's own SIGTERM follows it)."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.signals = signals
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested and name == self.signal_name:  # the same signal again: give up
            raise KeyboardInterrupt
        if self.requested:
            return
        self.requested = True
        self.signal_name = name

    def request(self, reason: str = "requested") -> None:
        """Ask for a stop from code (tests, a step budget)."""
        self.requested = True
        self.signal_name = reason

    def __enter__(self) -> StopRequest:
        for signum in self.signals:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: signals stay with their owner
                pass
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()


@dataclass(frozen=True)
class StageHooks:
    """What a stage runs among and reports to: the ranks, metrics.jsonl, the stop
    request it polls after every step, the progress bar, and a callback after every
    optimizer step (tests, step budgets)."""

    context: DistContext
    log: MetricsLog
    stop: StopRequest
    progress: StageProgress
    on_step: Callable[[int], None] | None = None


# --- the LoFi stage's batches ---------------------------------------------------------


def fidelity_for_batch(
    fidelities: Sequence[Fidelity], epoch: int, batch_index: int, cycle: str, short_every: int
) -> Fidelity:
    """The fidelity of batch `batch_index` (0-based, within the epoch) of `epoch`: the
    long cycle changes fidelity every epoch, the short cycle every `short_every` batches
    (C-LoFi, PAPER.md); a single fidelity never changes."""
    if len(fidelities) == 1:
        return fidelities[0]
    if cycle == "long":
        return fidelities[epoch % len(fidelities)]
    if cycle == "short":
        return fidelities[(batch_index // short_every) % len(fidelities)]
    raise ValueError(f"cycle must be long or short, got {cycle!r}")


class FidelityBatchSampler:
    """Yields lists of `(index, fidelity)`: each rank takes its share of a seeded
    permutation (torch's DistributedSampler, so the shards match what DDP users expect),
    cut into batches; `set_epoch` reshuffles, `skip` resumes part-way through an epoch
    (the number of batches already done)."""

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        fidelities: Sequence[Fidelity],
        *,
        cycle: str = "long",
        short_every: int = 16,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if dataset_size < 1:
            raise ValueError("no training videos")
        self.batch_size = batch_size
        self.fidelities = tuple(fidelities)
        self.cycle = cycle
        self.short_every = short_every
        self.drop_last = drop_last
        self._indices = DistributedSampler(
            range(dataset_size), num_replicas=world_size, rank=rank, shuffle=True, seed=seed
        )
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = epoch
        self.skip = skip
        self._indices.set_epoch(epoch)

    def __len__(self) -> int:
        count = len(self._indices)
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, Fidelity]]]:
        indices = list(self._indices)
        for batch_index in range(len(self)):
            chunk = indices[batch_index * self.batch_size : (batch_index + 1) * self.batch_size]
            if batch_index < self.skip:
                continue
            fidelity = fidelity_for_batch(
                self.fidelities, self.epoch, batch_index, self.cycle, self.short_every
            )
            yield [(index, fidelity) for index in chunk]


@dataclass(frozen=True)
class LoopParts:
    """What the LoFi stage's loop steps with, besides the model and the data."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.StepLR
    scaler: torch.amp.GradScaler
    sampler: FidelityBatchSampler
    loader: DataLoader


def build_loop(model: nn.Module, dataset: VideoDataset, candidate: Candidate, config: TrainConfig,
               *, rank: int, world_size: int, device: torch.device) -> LoopParts:
    """The LoFi stage's optimizer (config.lofi over `model`'s trainable parameters),
    schedule, gradient scaler (the candidate's precision), and this rank's batches (the
    candidate's batch per GPU and fidelities, the config's cycle and seed)."""
    optimizer = make_optimizer(model.parameters(), config.lofi)
    sampler = FidelityBatchSampler(
        len(dataset), candidate.batch_per_gpu, candidate.fidelities, cycle=config.cycle,
        short_every=config.short_cycle_batches, rank=rank, world_size=world_size, seed=config.seed,
    )
    loader = DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_clips, num_workers=config.num_workers,
        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(config.seed),
    )
    return LoopParts(optimizer, make_scheduler(optimizer, config.lofi), grad_scaler(device, candidate.precision),
                     sampler, loader)
