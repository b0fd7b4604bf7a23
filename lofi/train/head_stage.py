"""Stage 3, head: the TAL head trained from scratch at full fidelity on the frozen
encoder's features (PAPER.md; G-TAD's recipe: Adam lr 4e-3, weight decay 1e-4, 10
epochs, batch 16, lr x0.1 after 5 epochs; BMN's for BMN). Runs on one process (the
main rank; the others wait at a barrier): features are small and the head is fast, so
splitting it over ranks would save less than its gradient all-reduces cost (the
measurement is in docs/training.md). A stop request ends it after the batch in
flight, with a checkpoint that records the position in the epoch."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lofi.data.annotations import VideoRecord
from lofi.train.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from lofi.train.config import OptimConfig
from lofi.train.loop import StopRequest, make_optimizer, make_scheduler, rng_state, set_rng_state
from lofi.train.objective import batch_targets, per_video_loss, video_seed
from lofi.train.progress import NullProgress, StageProgress
from lofi.train.run_folder import MetricsLog


@dataclass(frozen=True)
class HeadOutcome:
    completed: bool
    epochs_done: int
    steps: int
    videos: int
    last_loss: float | None
    seconds: float


def train_head(
    head: nn.Module,
    features: Mapping[str, torch.Tensor],
    records: Sequence[VideoRecord],
    recipe: OptimConfig,
    *,
    batch_size: int,
    device: torch.device,
    checkpoint_dir,
    seed: int,
    log: MetricsLog,
    stop: StopRequest,
    progress: StageProgress | None = None,
    labels: str = "bmn",
    resume: bool = False,
) -> HeadOutcome:
    """Train `head` on (C, T) features of the `records` that have features."""
    progress = progress or NullProgress()
    usable = [r for r in records if r.video_id in features]
    if not usable:
        raise ValueError("no training video has features")
    head.to(device).train()
    optimizer = make_optimizer(head.parameters(), recipe)
    scheduler = make_scheduler(optimizer, recipe)
    epoch, step, done_in_epoch = 0, 0, 0
    if resume and has_checkpoint(checkpoint_dir):
        state = load_checkpoint(checkpoint_dir, map_location=device).state
        head.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        epoch, step = state["epoch"], state["step"]
        done_in_epoch = state.get("batches_done", 0)
    batches = -(-len(usable) // batch_size)
    progress.start("head", batches * recipe.epochs)
    progress.advance(epoch * batches + done_in_epoch)
    started = time.perf_counter()
    last_loss = None

    def save(batches_done: int) -> None:
        save_checkpoint(checkpoint_dir, {
            "stage": "head", "model": head.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step, "rng": rng_state(),
            "batches_done": batches_done,
        })

    while epoch < recipe.epochs:
        order = torch.randperm(len(usable), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for index, first in enumerate(range(0, len(usable), batch_size)):
            if index < done_in_epoch:
                continue
            chosen = [usable[int(i)] for i in order[first : first + batch_size]]
            x = torch.stack([features[r.video_id] for r in chosen]).to(device)  # (B, C, T)
            output = head(x)
            segments = [torch.tensor([[s.start, s.end] for s in r.segments], dtype=torch.float32).reshape(-1, 2)
                        for r in chosen]
            start_t, end_t, iou_t = batch_targets(segments, [r.duration for r in chosen], x.shape[2], device,
                                                  head=labels)
            terms = per_video_loss(output, start_t, end_t, iou_t, [video_seed(seed, step, r.video_id) for r in chosen])
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            optimizer.step()
            step += 1
            last_loss = float(terms.total.detach())
            progress.advance(1, loss=last_loss, lr=optimizer.param_groups[0]["lr"])
            if stop.requested and index + 1 < batches:
                save(index + 1)
                log.write(stage="head", event="stopped", epoch=epoch, step=step, loss=last_loss)
                progress.stop()
                return HeadOutcome(False, epoch, step, len(usable), last_loss, time.perf_counter() - started)
        epoch += 1
        done_in_epoch = 0
        scheduler.step()
        save(0)
        log.write(stage="head", event="epoch", epoch=epoch, step=step, loss=last_loss)
        if stop.requested and epoch < recipe.epochs:
            progress.stop()
            return HeadOutcome(False, epoch, step, len(usable), last_loss, time.perf_counter() - started)
    progress.stop()
    return HeadOutcome(True, epoch, step, len(usable), last_loss, time.perf_counter() - started)
