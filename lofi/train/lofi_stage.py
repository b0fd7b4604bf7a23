"""Stage 1, LoFi: encoder + head trained end to end at low fidelity (PAPER.md).

The plan fixes fidelity (or a C-LoFi cycle), batch per GPU, accumulation, precision
and checkpointing. The loop checkpoints every `checkpoint_every` optimizer steps and at
each epoch end, stops cleanly on SIGINT/SIGTERM, and resumes exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from lofi.data.dataset import VideoDataset, collate_clips
from lofi.models.heads import constant_buffer_names
from lofi.train.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from lofi.train.config import OptimConfig, TrainConfig
from lofi.train.distributed import DistContext
from lofi.train.objective import batch_loss
from lofi.train.precision import autocast, grad_scaler
from lofi.train.progress import NullProgress, StageProgress
from lofi.train.run_folder import MetricsLog
from lofi.train.sampling import FidelityBatchSampler
from lofi.train.stopping import StopRequest
from planner.candidate import Candidate


@dataclass(frozen=True)
class StageOutcome:
    completed: bool  # False: stopped by a signal (a checkpoint was written)
    steps: int
    epochs_done: int
    seconds: float
    skipped_videos: int
    peak_allocated_bytes: int | None
    peak_reserved_bytes: int | None
    last_loss: float | None


class OutOfMemoryDuringStage(RuntimeError):
    """A CUDA OOM despite the plan; the caller moves to a smaller candidate and resumes."""

    def __init__(self, candidate: Candidate, message: str) -> None:
        super().__init__(message)
        self.candidate = candidate


def make_optimizer(parameters, recipe: OptimConfig) -> torch.optim.Optimizer:
    trainable = [p for p in parameters if p.requires_grad]
    if recipe.name == "sgd":
        return torch.optim.SGD(trainable, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    return torch.optim.Adam(trainable, lr=recipe.lr, weight_decay=recipe.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: OptimConfig):
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


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def wrap_ddp(model: nn.Module, context: DistContext) -> nn.Module:
    """DDP over the ranks; the heads' fixed sampling matrices are never re-broadcast."""
    if not context.distributed:
        return model
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, constant_buffer_names(model))
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def run_lofi_stage(
    model: nn.Module,
    dataset: VideoDataset,
    candidate: Candidate,
    config: TrainConfig,
    context: DistContext,
    *,
    checkpoint_dir,
    plan_document: dict[str, Any] | None,
    log: MetricsLog,
    stop: StopRequest,
    progress: StageProgress | None = None,
    resume: bool = False,
    on_step: Callable[[int], None] | None = None,
    planned_bytes: int | None = None,
) -> StageOutcome:
    """Train `model` (unwrapped LoFiModel, on context.device) end to end; see module doc."""
    progress = progress or NullProgress()
    recipe = config.lofi
    device = context.device
    model.to(device)
    ddp_model = wrap_ddp(model, context)
    optimizer = make_optimizer(model.parameters(), recipe)
    scheduler = make_scheduler(optimizer, recipe)
    scaler = grad_scaler(device, candidate.precision)
    sampler = FidelityBatchSampler(
        len(dataset), candidate.batch_per_gpu, candidate.fidelities, cycle=config.cycle,
        short_every=config.short_cycle_batches, rank=context.rank, world_size=context.world_size,
        seed=config.seed,
    )
    loader = DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_clips, num_workers=config.num_workers,
        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(config.seed),
    )

    epoch, batches_done, step = 0, 0, 0
    if resume and has_checkpoint(checkpoint_dir):
        loaded = load_checkpoint(checkpoint_dir, map_location=device)
        state = loaded.state
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        epoch, step = state["epoch"], state["step"]
        # Resume by videos done, so a fallback to another batch size skips the same videos.
        batches_done = state["videos_done"] // candidate.batch_per_gpu
        log.write(stage="lofi", event="resumed", step=step, epoch=epoch, checkpoint=loaded.path.name)

    def save(epoch_to_store: int, batches: int) -> None:
        if not context.is_main:
            return
        save_checkpoint(checkpoint_dir, {
            "stage": "lofi",
            "model": unwrap(ddp_model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch_to_store,
            "videos_done": batches * candidate.batch_per_gpu,
            "step": step,
            "rng": rng_state(),
            "candidate": _candidate_dict(candidate),
            "plan": plan_document,
        })

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    skipped = 0
    last_loss: float | None = None
    steps_per_epoch = -(-len(sampler) // candidate.accumulation)
    progress.start("LoFi", steps_per_epoch * recipe.epochs)
    progress.advance(step)
    ddp_model.train()
    while epoch < recipe.epochs:
        sampler.set_epoch(epoch, skip=batches_done)
        dataset.set_epoch(epoch)
        micro = batches_done
        window_start, window_clips = time.perf_counter(), 0
        oom: str | None = None
        for batch in loader:
            skipped += len(batch.skipped)
            last_in_window = (micro + 1) % candidate.accumulation == 0 or micro + 1 == len(sampler)
            try:
                loss = _micro_step(ddp_model, batch, candidate, config, context, scaler, step, last_in_window)
                if last_in_window:
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
            except torch.cuda.OutOfMemoryError as error:
                oom = str(error).splitlines()[0]  # leaving this block frees the step's tensors
            if oom is not None:
                break
            if loss is not None:
                last_loss = loss
                window_clips += batch.clips.shape[0]
            micro += 1
            if not last_in_window:
                continue
            step += 1
            fields = _step_fields(last_loss, optimizer, window_clips, window_start, device, planned_bytes)
            window_start, window_clips = time.perf_counter(), 0
            progress.advance(1, **fields)
            if step % config.log_every == 0 or step == 1:
                log.write(stage="lofi", step=step, epoch=epoch, fidelity=batch.fidelity.label() if batch.fidelity else None, **fields)
            if on_step is not None:
                on_step(step)
            if stop.requested:
                save(epoch, micro)
                progress.stop()
                return _outcome(False, step, epoch, started, skipped, device, last_loss)
            if step % config.checkpoint_every == 0:
                save(epoch, micro)
        if oom is not None:
            optimizer.zero_grad(set_to_none=True)
            progress.stop()
            raise OutOfMemoryDuringStage(candidate, oom)
        epoch += 1
        batches_done = 0
        scheduler.step()
        save(epoch, 0)
        log.write(stage="lofi", event="epoch", epoch=epoch, step=step, loss=last_loss, skipped=skipped)
    progress.stop()
    return _outcome(True, step, epoch, started, skipped, device, last_loss)


def _micro_step(ddp_model, batch, candidate: Candidate, config: TrainConfig, context: DistContext, scaler,
                step: int, last_in_window: bool) -> float | None:
    """Forward and backward of one micro-batch (gradients synchronised across ranks only
    on the last micro-batch of an accumulation window); the loss, or None for a batch
    whose videos were all skipped."""
    if batch.clips.shape[0] == 0:
        return None
    device = context.device
    sync = contextlib.nullcontext() if last_in_window or not context.distributed else ddp_model.no_sync()
    with sync:
        clips = batch.clips.to(device, non_blocking=True)
        with autocast(device, candidate.precision):
            output = ddp_model(clips)
        terms = batch_loss(output, batch, seed=config.seed, step=step, head=config.head)
        scaler.scale(terms.total / candidate.accumulation).backward()
    return float(terms.total.detach())


def _step_fields(loss, optimizer, clips, since, device, planned_bytes) -> dict[str, Any]:
    """What the progress bar and metrics.jsonl show after an optimizer step; on a GPU the
    peak reserved memory so far against the plan's estimate of it."""
    elapsed = max(time.perf_counter() - since, 1e-9)
    fields: dict[str, Any] = {"loss": loss, "lr": optimizer.param_groups[0]["lr"], "clips/s": round(clips / elapsed, 2)}
    if device.type == "cuda":
        fields["peak_GiB"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
        if planned_bytes:
            fields["planned_GiB"] = round(planned_bytes / 2**30, 2)
    return fields


def _outcome(completed, step, epoch, started, skipped, device, last_loss) -> StageOutcome:
    allocated = reserved = None
    if device.type == "cuda":
        allocated = torch.cuda.max_memory_allocated(device)
        reserved = torch.cuda.max_memory_reserved(device)
    return StageOutcome(completed, step, epoch, time.perf_counter() - started, skipped, allocated, reserved, last_loss)


def _candidate_dict(candidate: Candidate) -> dict[str, Any]:
    from planner.plan_file import candidate_to_dict

    return candidate_to_dict(candidate)
