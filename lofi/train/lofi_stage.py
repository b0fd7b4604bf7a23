"""Stage 1, LoFi: encoder + head trained end to end at low fidelity (PAPER.md).

The plan fixes fidelity (or a C-LoFi cycle), batch per GPU, accumulation, precision
and checkpointing. The loop checkpoints every `checkpoint_every` optimizer steps and at
each epoch end, stops cleanly on SIGINT/SIGTERM, and resumes exactly where it stopped.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from lofi.data.dataset import VideoDataset, collate_clips
from lofi.models.heads import constant_buffer_names
from lofi.models.lofi_model import build_optimizer
from lofi.train.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from lofi.train.config import OptimConfig, TrainConfig
from lofi.train.distributed import DistContext, agree, average_gradients, broadcast_parameters, sum_over_ranks
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
    """The recipe's optimizer, built as the planner traces it (`lofi.models.lofi_model`)."""
    return build_optimizer(parameters, recipe.name, lr=recipe.lr, momentum=recipe.momentum,
                           weight_decay=recipe.weight_decay)


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
    """Train `model` (LoFiModel, on context.device) end to end; see module doc.

    Data parallel over the ranks: each rank accumulates its micro-batches' gradients
    locally; after every micro-batch the ranks agree (an all-reduce of one flag)
    whether any ran out of memory; at the end of an accumulation window they average
    gradients (`average_gradients`), step, and agree whether any was asked to stop (with
    the global batch's loss, in the same all-reduce). So an
    OOM on one rank becomes the same fallback on all of them, and a signal stops all
    of them after the same optimizer step."""
    progress = progress or NullProgress()
    recipe = config.lofi
    device = context.device
    model.to(device)
    constants = set(constant_buffer_names(model))
    broadcast_parameters(model, context, skip=constants)
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
        # Resume by videos done over all ranks, so a fallback to another batch size or a
        # resume under another world size skips the same videos.
        videos = state.get("global_videos_done", state["videos_done"] * context.world_size)
        batches_done = videos // (candidate.batch_per_gpu * context.world_size)
        log.write(stage="lofi", event="resumed", step=step, epoch=epoch, checkpoint=loaded.path.name)

    def save(epoch_to_store: int, batches: int) -> None:
        if not context.is_main:
            return
        save_checkpoint(checkpoint_dir, {
            "stage": "lofi",
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch_to_store,
            "videos_done": batches * candidate.batch_per_gpu,
            "global_videos_done": batches * candidate.batch_per_gpu * context.world_size,
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
    model.train()
    while epoch < recipe.epochs:
        sampler.set_epoch(epoch, skip=batches_done)
        dataset.set_epoch(epoch)
        micro = batches_done
        window_start, window_clips, window_loss = time.perf_counter(), 0, 0.0
        oom: str | None = None
        for batch in loader:
            skipped += len(batch.skipped)
            last_in_window = (micro + 1) % candidate.accumulation == 0 or micro + 1 == len(sampler)
            loss = None
            try:
                loss = _micro_step(model, batch, candidate, config, scaler, step)
            except torch.cuda.OutOfMemoryError as error:
                oom = str(error).splitlines()[0]  # leaving this block frees the step's tensors
            if agree(context, oom is not None, what="a LoFi step")[0]:
                oom = oom or "another rank ran out of CUDA memory"
                break
            try:
                if last_in_window:
                    average_gradients(model.parameters(), context)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
            except torch.cuda.OutOfMemoryError as error:  # the optimizer's state on its first step
                oom = str(error).splitlines()[0]
            if last_in_window and agree(context, oom is not None, what="a LoFi optimizer step")[0]:
                oom = oom or "another rank ran out of CUDA memory"
                break
            if loss is not None:
                window_clips += batch.clips.shape[0]
                window_loss += loss * batch.clips.shape[0]
            micro += 1
            if not last_in_window:
                continue
            step += 1
            if on_step is not None:
                on_step(step)
            # One all-reduce: whether any rank was asked to stop, and the loss of the
            # global batch (the mean over its videos on every rank), the same number
            # whatever the split over ranks and accumulation steps.
            stops, loss_sum, clips = sum_over_ranks(context, float(stop.requested), window_loss, window_clips,
                                                    what="the end of a LoFi step")
            last_loss = loss_sum / clips if clips else last_loss
            fields = _step_fields(last_loss, optimizer, int(clips), window_start, device, planned_bytes)  # all ranks' clips/s
            window_start, window_clips, window_loss = time.perf_counter(), 0, 0.0
            progress.advance(1, **fields)
            if step % config.log_every == 0 or step == 1:
                log.write(stage="lofi", step=step, epoch=epoch, fidelity=batch.fidelity.label() if batch.fidelity else None, **fields)
            if stops > 0:
                stop.request(stop.signal_name or "another rank was signalled")
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


def _micro_step(model, batch, candidate: Candidate, config: TrainConfig, scaler, step: int) -> float | None:
    """Forward and backward of one micro-batch, gradients accumulated on this rank; the
    loss, or None for a batch whose videos were all skipped."""
    if batch.clips.shape[0] == 0:
        return None
    device = next(model.parameters()).device
    clips = batch.clips.to(device, non_blocking=True)
    with autocast(device, candidate.precision):
        output = model(clips)
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
