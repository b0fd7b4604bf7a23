"""Stage 1, LoFi: encoder + head trained end to end at low fidelity (PAPER.md).

The plan fixes fidelity (or a C-LoFi cycle), batch per GPU, accumulation, precision
and checkpointing. The loop checkpoints every `checkpoint_every` optimizer steps and at
each epoch end, stops cleanly on SIGINT/SIGTERM, and resumes exactly where it stopped.

A checkpoint can rebuild its run's model on its own: it holds the TrainConfig (as
config.json does: encoder, head, pretrained weights, BatchNorm mode, recipe) and the
candidate (the fidelities the head takes, checkpointing) beside the weights
(`model_from_checkpoint`). A resume whose config contradicts the checkpoint's in what
the weights and optimizer state depend on is refused (`check_resumed_config`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lofi.data.dataset import VideoDataset
from lofi.errors import CheckpointError
from lofi.models.heads import constant_buffer_names
from lofi.models.lofi_model import LoFiModel, build_lofi_model
from lofi.train.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from lofi.train.config import TrainConfig, config_from_dict, config_to_dict, encoder_bn_mode
from lofi.train.distributed import agree, average_gradients, broadcast_parameters, sum_over_ranks
from lofi.train.loop import LoopParts, StageHooks, autocast, rng_state, set_rng_state
from lofi.train.objective import batch_loss
from planner.candidate import Candidate
from planner.plan_file import candidate_from_dict, candidate_to_dict


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


# What the weights and the optimizer state of a LoFi checkpoint depend on: a resumed run
# must agree with the checkpoint on these (`rebuild_fields`: TrainConfig fields, bn_mode as
# the encoder runs, optimizer the LoFi recipe's name and momentum).
REBUILD_FIELDS = ("backbone", "head", "pretrained", "bn_mode", "optimizer")


def run_lofi_stage(
    model: nn.Module,
    dataset: VideoDataset,
    parts: LoopParts,
    candidate: Candidate,
    config: TrainConfig,
    hooks: StageHooks,
    *,
    checkpoint_dir: Path,
    plan_document: dict[str, Any] | None,
    resume: bool = False,
    planned_bytes: int | None = None,
) -> StageOutcome:
    """Train `model` (LoFiModel, moved to the context's device) end to end with `parts`
    (`lofi.train.loop.build_loop`, over the same model and `dataset`); see module doc.

    Data parallel over the ranks: each rank accumulates its micro-batches' gradients
    locally; after every micro-batch the ranks agree (an all-reduce of one flag)
    whether any ran out of memory; at the end of an accumulation window they average
    gradients (`average_gradients`), step, and agree whether any was asked to stop (with
    the global batch's loss, in the same all-reduce). So an
    OOM on one rank becomes the same fallback on all of them, and a signal stops all
    of them after the same optimizer step."""
    context, log, stop, progress, on_step = hooks.context, hooks.log, hooks.stop, hooks.progress, hooks.on_step
    optimizer, scheduler, scaler, sampler = parts.optimizer, parts.scheduler, parts.scaler, parts.sampler
    recipe = config.lofi
    device = context.device
    model.to(device)
    constants = set(constant_buffer_names(model))
    broadcast_parameters(model, context, skip=constants)

    epoch, batches_done, step = 0, 0, 0
    if resume and has_checkpoint(checkpoint_dir):
        loaded = load_checkpoint(checkpoint_dir, map_location=device)
        state = loaded.state
        check_resumed_config(state, config, loaded.path)  # after an OOM fallback too
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
            "candidate": candidate_to_dict(candidate),
            "plan": plan_document,
            "config": config_to_dict(config),
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
        for batch in parts.loader:
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


def checkpoint_config(state: dict[str, Any], origin: str | Path) -> TrainConfig | None:
    """The TrainConfig a LoFi checkpoint was written under; None for a checkpoint from
    before checkpoints held it."""
    stored = state.get("config")
    return None if stored is None else config_from_dict(stored, f"{origin}: config")


def rebuild_fields(config: TrainConfig) -> dict[str, Any]:
    """The REBUILD_FIELDS of `config`: what a LoFi checkpoint's weights and optimizer
    state depend on."""
    return {"backbone": config.backbone, "head": config.head, "pretrained": config.pretrained,
            "bn_mode": encoder_bn_mode(config), "optimizer": (config.lofi.name, config.lofi.momentum)}


def check_resumed_config(state: dict[str, Any], config: TrainConfig, origin: str | Path) -> None:
    """A CheckpointError naming the first field where the run's `config` contradicts the
    config the checkpoint `state` was written under (REBUILD_FIELDS)."""
    stored = checkpoint_config(state, origin)
    if stored is None:
        return
    theirs, ours = rebuild_fields(stored), rebuild_fields(config)
    for name in REBUILD_FIELDS:
        if theirs[name] != ours[name]:
            raise CheckpointError(
                f"{origin}: written with {name} {theirs[name]!r}, but this run's config has {ours[name]!r}; "
                "resume with the config the checkpoint was written under (the run's config.json) or start a new run")


def model_from_checkpoint(state: dict[str, Any], origin: str | Path, *, fallback: TrainConfig,
                          device: torch.device) -> tuple[LoFiModel, TrainConfig]:
    """The trained model of a LoFi checkpoint, rebuilt from what the checkpoint holds: its
    config (encoder, head, BatchNorm mode), its candidate (the head's T for each fidelity)
    and its weights; `fallback` is the config of a checkpoint that holds none. The
    pre-trained weights are not read again: the checkpoint's replace them."""
    config = checkpoint_config(state, origin) or fallback
    candidate = candidate_from_dict(state["candidate"], f"{origin}: candidate")
    model = build_lofi_model(config.backbone, config.head, [f.tr for f in candidate.fidelities],
                             bn_mode=encoder_bn_mode(config), device=device)
    model.load_state_dict(state["model"])
    return model, config
