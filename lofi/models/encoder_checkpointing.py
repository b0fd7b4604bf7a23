"""Gradient checkpointing for the video encoders: the policy string and one checkpoint
segment that recomputes without touching BatchNorm running statistics twice.

Policies (the planner's `Candidate.checkpointing`, parsed by `planner.checkpointing.parse`):

    none      keep every activation for backward
    blocks:N  N residual blocks are segments of their own: the N that save the most
              activation memory per recomputed FLOP (`lofi.models.encoders.checkpoint_order`), so
              the planner can checkpoint just enough to fit
    block     every residual block is one segment (timm `set_grad_checkpointing`)
    chunk:K   the encoder runs K snippets at a time; each chunk, normalisation included,
              is one segment, so backward holds about one chunk's activations at a time
    offload   every residual block runs under `torch.autograd.graph.save_on_cpu(
              pin_memory=True)`: what it saves for backward is copied to pinned host
              memory in forward and back to the device in backward (`offload_context`)
    ...+head  the head's sampled boundary-matching map in segments over the
              anchor durations (`piecewise_segments`, by `heads.sampling.map_through`)

Segments use non-reentrant `torch.utils.checkpoint` (PyTorch docs recommend it; it works
when no input requires grad, as for uint8 clips). `preserve_rng_state=False`: the
encoders have no dropout or other randomness, and skipping the RNG snapshot lets the
planner trace fake CUDA tensors on a machine without CUDA.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from lofi.errors import OptionError
from planner import checkpointing
from planner.checkpointing import Checkpointing

_RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")


def parse_policy(policy: str) -> Checkpointing:
    """A policy as written ('blocks:3', 'offload+head', ...) -> Checkpointing; anything
    else is an OptionError."""
    if not isinstance(policy, str):
        raise OptionError(f"checkpointing policy must be a string ({checkpointing.syntax()}), got {policy!r}")
    try:
        return checkpointing.parse(policy)
    except ValueError as exc:
        raise OptionError(str(exc)) from None


@contextmanager
def scratch_running_stats(scope: nn.Module) -> Iterator[None]:
    """While active, BatchNorm layers of `scope` that would update their running
    statistics (train mode, tracking on) update scratch copies instead.

    Used as the recompute context of a checkpoint segment: the recomputation runs the
    same ops, saves the same tensors (so torch's recompute bookkeeping still matches) and
    computes the same batch statistics, but the real running statistics keep the single
    update they got in the original forward pass."""
    swapped: list[tuple[_BatchNorm, dict[str, torch.Tensor]]] = []
    for module in scope.modules():
        if isinstance(module, _BatchNorm) and module.training and module.track_running_stats:
            originals = {name: getattr(module, name) for name in _RUNNING_STATS}
            for name, buffer in originals.items():
                if buffer is not None:
                    setattr(module, name, buffer.clone())
            swapped.append((module, originals))
    try:
        yield
    finally:
        for module, originals in swapped:
            for name, buffer in originals.items():
                setattr(module, name, buffer)


def run_segment(fn: Callable[..., Any], scope: nn.Module, *args: Any) -> Any:
    """fn(*args) as one non-reentrant checkpoint segment whose BatchNorm layers live in
    `scope`. Without autograd (feature extraction) there is nothing to save: fn runs
    plainly."""
    if not torch.is_grad_enabled():
        return fn(*args)
    return checkpoint(
        fn,
        *args,
        use_reentrant=False,
        preserve_rng_state=False,
        context_fn=lambda: (nullcontext(), scratch_running_stats(scope)),
    )


def save_on_cpu() -> AbstractContextManager:
    """The offload policy's context around one encoder block: saved tensors go to pinned
    host memory (pinning only where CUDA is available; on a CPU they are copied on the
    CPU, which keeps the code path and the gradients the same)."""
    return torch.autograd.graph.save_on_cpu(pin_memory=True)


def piecewise_segments(fn: Callable[..., Tensor], scope: nn.Module, x: Tensor, pieces: list, dim: int) -> Tensor:
    """cat([fn(x, piece) for piece in pieces], dim), each call one checkpoint segment
    (`run_segment`): backward then recomputes and holds one piece's intermediates at a
    time instead of all of them."""
    return torch.cat([run_segment(fn, scope, x, piece) for piece in pieces], dim=dim)
