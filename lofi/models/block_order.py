"""Which residual blocks of a video encoder `blocks:N` checkpoints: the N that save the
most activation memory per recomputed FLOP, measured by `planner.block_costs` on one
forward of the encoder on the meta device.

The order is a function of the architecture alone: it is measured once per encoder name
on a canonical input (one snippet of 8 frames at 224 x 224, float32, BatchNorm frozen),
so `lofi train` and the planner's trace (both set the policy through
`VideoEncoder.set_grad_checkpointing`) checkpoint the same blocks at every fidelity.
Within a ResNet stage, saved bytes and FLOPs both scale with frames x height x width, so
the order would not change with the input size except through rounding. Measured, it is
the forward order for every encoder here (earlier stages keep more bytes per FLOP:
fewer channels), with ties (blocks of the same shape) going to the earlier block.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from planner import block_costs

CANONICAL_FRAMES = 8
CANONICAL_SIDE = 224


@lru_cache(maxsize=None)
def costs(name: str) -> tuple[block_costs.BlockCost, ...]:
    """The cost of checkpointing each residual block of encoder `name` (ENCODERS key)."""
    from lofi.models.encoders import build_encoder

    encoder = build_encoder(name, device="meta")
    snippets = torch.empty(1, CANONICAL_FRAMES, 3, CANONICAL_SIDE, CANONICAL_SIDE, device="meta")  # (N, F, 3, H, W)
    return block_costs.measure(lambda: encoder.snippet_features(snippets), encoder.residual_blocks(),
                               [*encoder.parameters(), *encoder.buffers()])


@lru_cache(maxsize=None)
def checkpoint_order(name: str) -> tuple[int, ...]:
    """Block positions of encoder `name`; `blocks:N` checkpoints the first N."""
    return block_costs.checkpoint_order(costs(name))
