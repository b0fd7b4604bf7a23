"""What checkpointing each block of a model would save and cost, measured: the order in
which the `blocks:N` policy (planner/checkpointing.py) checkpoints a model's blocks.

Checkpointing a block frees, between its forward and its backward, the tensors its ops
saved for backward (its input stays: the checkpoint segment keeps it), and runs its
forward once more in backward. So the N blocks that give the most memory for the least
recomputation are the first N by saved bytes / forward FLOPs. Both are measured on one
forward pass of the model (meta tensors: shapes only, no memory): the tensors each block
saves for backward through `torch.autograd.graph.saved_tensors_hooks` (distinct
storages, parameters, buffers and the block's input excluded), its FLOPs with torch's
formulas (`torch.utils.flop_counter`, the ones the tracer counts). A workload calls
`measure` with its own model and a canonical input, so the order depends on the
architecture alone and the trainer and the planner's trace checkpoint the same blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class BlockCost:
    index: int  # position in forward order
    saved_bytes: int  # what its ops keep for backward (freed by checkpointing it)
    flops: float  # its forward: what checkpointing it recomputes

    @property
    def bytes_per_flop(self) -> float:
        return self.saved_bytes / self.flops if self.flops else float("inf")


def measure(forward: Callable[[], object], blocks: Sequence[nn.Module], held: Sequence[torch.Tensor] = ()
            ) -> tuple[BlockCost, ...]:
    """Run `forward()` (which must call every block in `blocks` once, in order) and
    return each block's cost. `held`: tensors that are not activations (the model's
    parameters and buffers)."""
    held_keys = {_storage_key(t) for t in held}
    saved: list[dict[int, int]] = [{} for _ in blocks]
    flops = [0.0] * len(blocks)
    state: dict[str, int | None] = {"block": None, "input": None, "start": 0}
    counter = FlopCounterMode(display=False)

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        index, key = state["block"], _storage_key(tensor)
        if index is not None and key not in held_keys and key != state["input"]:
            saved[index][key] = tensor.untyped_storage().nbytes()
        return tensor

    def enter(index: int):
        def hook(module, args):
            state.update(block=index, input=_storage_key(args[0]), start=counter.get_total_flops())
        return hook

    def leave(index: int):
        def hook(module, args, output):
            flops[index] = float(counter.get_total_flops() - (state["start"] or 0))
            state.update(block=None, input=None)
        return hook

    handles = [h for i, block in enumerate(blocks)
               for h in (block.register_forward_pre_hook(enter(i)), block.register_forward_hook(leave(i)))]
    try:
        with counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            forward()
    finally:
        for handle in handles:
            handle.remove()
    return tuple(BlockCost(i, sum(saved[i].values()), flops[i]) for i in range(len(blocks)))


def checkpoint_order(costs: Sequence[BlockCost]) -> tuple[int, ...]:
    """Block positions, most saved bytes per recomputed FLOP first (ties: the earlier
    block); `blocks:N` checkpoints the first N."""
    return tuple(c.index for c in sorted(costs, key=lambda c: (-c.bytes_per_flop, c.index)))


def _storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata
