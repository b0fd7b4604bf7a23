"""The training objective of a batch: the TAL loss (TEM + 10 PEM_reg + PEM_cls,
PAPER.md) of every video on its own, averaged over the videos.

Averaging per-video losses (rather than pooling the batch, as BMN's code does) makes
the gradient of a global batch independent of how it is split into GPUs, micro-batches
and accumulation steps: the planner can change batch per GPU and accumulation without
changing the optimisation. Each video's PEM_reg sampling uses its own generator seeded
by (seed, step, video), so the result does not depend on which rank drew it either.
"""

from __future__ import annotations

import numpy as np
import torch

from lofi.data.dataset import ClipBatch
from lofi.models.heads.output import HeadOutput
from lofi.models.labels import make_targets, targets_to_tensors, valid_anchor_mask
from lofi.models.losses import LossTerms, tal_loss


def batch_targets(
    segments: list[torch.Tensor], durations: list[float], temporal_dim: int, device: torch.device,
    *, head: str = "bmn",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """start (B, T), end (B, T), iou_map (B, T, T) for ground-truth segments in seconds,
    with the boundary regions of `head` (lofi.models.labels)."""
    targets = [
        make_targets(seg.numpy().astype(np.float64), float(duration), temporal_dim, head=head)
        for seg, duration in zip(segments, durations)
    ]
    return targets_to_tensors(targets, device)


def video_seed(seed: int, step: int, video_id: str) -> int:
    """A stable 63-bit seed for one video's loss sampling at one optimizer step."""
    digest = np.random.SeedSequence([seed, step, *video_id.encode("utf-8")]).generate_state(2)
    return int(digest[0]) << 31 ^ int(digest[1])


def per_video_loss(
    output: HeadOutput,
    start_t: torch.Tensor,
    end_t: torch.Tensor,
    iou_t: torch.Tensor,
    seeds: list[int],
) -> LossTerms:
    """Mean over videos of each video's TAL loss."""
    temporal_dim = start_t.shape[1]
    mask = torch.from_numpy(valid_anchor_mask(temporal_dim)).to(start_t.device)  # (T, T)
    terms = []
    for b, seed in enumerate(seeds):
        generator = torch.Generator(device=start_t.device)
        generator.manual_seed(seed)
        one = HeadOutput(output.start[b : b + 1], output.end[b : b + 1], output.confidence_map[b : b + 1])
        terms.append(tal_loss(one, start_t[b : b + 1], end_t[b : b + 1], iou_t[b : b + 1], mask,
                              generator=generator))
    return LossTerms(*(torch.stack(parts).mean() for parts in zip(*terms)))


def batch_loss(output: HeadOutput, batch: ClipBatch, *, seed: int, step: int, head: str = "bmn") -> LossTerms:
    """The objective of a ClipBatch whose clips produced `output` (a `head` head)."""
    temporal_dim = output.start.shape[1]
    device = output.start.device
    start_t, end_t, iou_t = batch_targets(batch.segments, batch.durations.tolist(), temporal_dim, device,
                                          head=head)
    seeds = [video_seed(seed, step, video_id) for video_id in batch.video_ids]
    return per_video_loss(output, start_t, end_t, iou_t, seeds)
