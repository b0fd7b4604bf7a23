"""Which residual blocks `blocks:N` checkpoints: the N that save the most activation
memory per recomputed FLOP.

Checkpointing a block frees, between its forward and its backward, the tensors its ops
saved for backward (its input stays: the segment keeps it), and costs one more forward
of the block in backward. So the cheapest N blocks to checkpoint for the most memory are
the first N by saved bytes / forward FLOPs. Both are measured, as the planner measures a
step: a forward of the encoder on the meta device (no memory, shapes only), the tensors
each block saves for backward seen through `torch.autograd.graph.saved_tensors_hooks`
(distinct storages, parameters and the block's input excluded), its FLOPs counted with
torch's own formulas (`torch.utils.flop_counter`, which the planner's tracer uses too).

The order is a function of the architecture alone: it is measured once per encoder name
on a canonical input (one snippet of 8 frames at 224 x 224, float32, BatchNorm frozen),
so `lofi train` and the planner's trace (both build the model through
`VideoEncoder.set_grad_checkpointing`) checkpoint the same blocks whatever the fidelity.
Within a ResNet stage both numbers scale with the frames x height x width of the stage,
so the order does not depend on the input size except through rounding; ties (blocks
of the same shape) go to the earlier block.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch.utils.flop_counter import FlopCounterMode

CANONICAL_FRAMES = 8
CANONICAL_SIDE = 224


@dataclass(frozen=True)
class BlockCost:
    """One residual block at the canonical input."""

    index: int  # position in forward order
    name: str  # 'layer1.0'
    saved_bytes: int  # what its ops keep for backward (freed by checkpointing it)
    flops: float  # its forward: what checkpointing it recomputes

    @property
    def bytes_per_flop(self) -> float:
        return self.saved_bytes / self.flops if self.flops else float("inf")


@lru_cache(maxsize=None)
def block_costs(name: str) -> tuple[BlockCost, ...]:
    """The cost of every residual block of encoder `name` (a key of ENCODERS)."""
    from lofi.models.encoders import build_encoder

    encoder = build_encoder(name, device="meta")
    held = {_storage_key(t) for t in [*encoder.parameters(), *encoder.buffers()]}
    blocks = encoder.residual_blocks()
    saved: list[dict[int, int]] = [{} for _ in blocks]
    flops = [0.0] * len(blocks)
    state: dict[str, object] = {"block": None, "input": None, "start": 0}
    counter = FlopCounterMode(display=False)

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        index = state["block"]
        key = _storage_key(tensor)
        if index is not None and key not in held and key != state["input"]:
            saved[index][key] = tensor.untyped_storage().nbytes()  # type: ignore[index]
        return tensor

    def enter(index: int):
        def hook(module, args):
            state.update(block=index, input=_storage_key(args[0]), start=counter.get_total_flops())
        return hook

    def leave(index: int):
        def hook(module, args, output):
            flops[index] = float(counter.get_total_flops() - state["start"])  # type: ignore[operator]
            state.update(block=None, input=None)
        return hook

    handles = [h for i, block in enumerate(blocks)
               for h in (block.register_forward_pre_hook(enter(i)), block.register_forward_hook(leave(i)))]
    snippets = torch.empty(1, CANONICAL_FRAMES, 3, CANONICAL_SIDE, CANONICAL_SIDE, device="meta")  # (N, F, 3, H, W)
    try:
        with counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            encoder.snippet_features(snippets)
    finally:
        for handle in handles:
            handle.remove()
    names = encoder.block_names()
    return tuple(BlockCost(i, names[i], sum(saved[i].values()), flops[i]) for i in range(len(blocks)))


@lru_cache(maxsize=None)
def checkpoint_order(name: str) -> tuple[int, ...]:
    """Block positions of encoder `name`, most saved bytes per recomputed FLOP first
    (ties: the earlier block); `blocks:N` checkpoints the first N."""
    return tuple(c.index for c in sorted(block_costs(name), key=lambda c: (-c.bytes_per_flop, c.index)))


def _storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata
