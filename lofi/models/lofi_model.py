"""The end-to-end LoFi model and its optimizer: the one builder that `lofi train`, the
planner's workload (`lofi.plan_workload`) and the measuring step (`lofi.measure_step`)
share, so that what is planned and measured is what is trained: the same encoder and
BatchNorm mode, the same head (for a C-LoFi cycle, holding every member's sampling
matrices), the same checkpointing policy and the same optimizer."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from lofi.models.encoder_checkpointing import parse_policy
from lofi.models.encoders import build_encoder
from lofi.models.head_output import HeadOutput
from lofi.models.heads import build_head

# The plan's optimizer names (planner.candidate.OPTIMIZERS) -> (torch optimizer, momentum).
# PAPER.md, "LoFi optimisation": SGD, momentum 0; sgd_momentum is the common 0.9.
PLAN_OPTIMIZERS = {"sgd": ("sgd", 0.0), "sgd_momentum": ("sgd", 0.9), "adam": ("adam", 0.0)}


class LoFiModel(nn.Module):
    """clips (B, TR, F, 3, SR, SR) -> encoder -> (B, C, TR) -> head -> HeadOutput with
    T = TR. The head takes any T >= 4, so a C-LoFi cycle (TR 100, 25, 50) trains one set
    of weights."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, clips: torch.Tensor) -> HeadOutput:
        features = self.encoder(clips)  # (B, C, TR)
        return self.head(features)


# The plan's BatchNorm names (planner.candidate.BATCHNORM) -> the encoder's bn_mode.
PLAN_BN_MODES = {"frozen": "frozen", "trained": "train", "partial": "partial"}


def plan_bn_name(bn_mode: str) -> str:
    """The plan's name for an encoder bn_mode (the inverse of PLAN_BN_MODES)."""
    return {mode: name for name, mode in PLAN_BN_MODES.items()}[bn_mode]


def build_lofi_model(
    backbone: str,
    head: str,
    temporal_dims: Sequence[int],
    *,
    pretrained: str | None = None,
    freeze_bn: bool = True,
    bn_mode: str | None = None,
    checkpointing: str = "none",
    device: torch.device | str | None = None,
) -> LoFiModel:
    """The end-to-end model for a candidate, in train mode: the head takes every T in
    `temporal_dims` (the TR of each fidelity of a C-LoFi cycle in cycle order, or just
    one). BatchNorm: `bn_mode` (train|frozen|partial) when given, else from `freeze_bn`.
    `checkpointing`: the encoder's policy; a `+head` suffix also checkpoints the head's
    sampled map, in segments over the anchor durations."""
    encoder = build_encoder(backbone, pretrained=pretrained, freeze_bn=freeze_bn, bn_mode=bn_mode, device=device)
    encoder.set_grad_checkpointing(checkpointing)
    first, *others = dict.fromkeys(temporal_dims)  # unique, in order
    tal_head = build_head(head, in_channels=encoder.out_channels, temporal_dim=first,
                          extra_temporal_dims=tuple(others), device=device)
    tal_head.checkpoint_map = parse_policy(checkpointing).head  # the policy's `+head`
    return LoFiModel(encoder, tal_head).train()


def build_optimizer(
    parameters: Iterable[nn.Parameter],
    name: str,
    *,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 1e-4,
    foreach: bool | None = None,
) -> torch.optim.Optimizer:
    """SGD (with or without momentum) or Adam over the trainable `parameters`.
    `foreach=None` lets PyTorch choose (multi-tensor on CUDA, per-tensor on the CPU:
    torch/optim/optimizer.py `_default_to_fused_or_foreach`); the planner passes what
    that choice would be on its target."""
    trainable = [p for p in parameters if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(trainable, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=foreach)
    if name == "adam":
        return torch.optim.Adam(trainable, lr=lr, weight_decay=weight_decay, foreach=foreach)
    raise ValueError(f"optimizer must be sgd or adam, got {name!r}")


def plan_optimizer_name(name: str, momentum: float) -> str:
    """The plan's name (planner.candidate.OPTIMIZERS) of a torch optimizer setting."""
    if name == "adam":
        return "adam"
    return "sgd_momentum" if momentum > 0 else "sgd"
