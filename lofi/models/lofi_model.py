"""The end-to-end LoFi model: the one builder that `lofi train`, the planner's workload
(`lofi.plan_workload`) and the measuring step (`lofi.measure_step`) share, so that what
is planned and measured is what is trained: the same encoder and BatchNorm mode, the
same head (for a C-LoFi cycle, holding every member's sampling matrices) and the same
checkpointing policy. The optimizer has one builder too, the planner's
(`planner.workload.build_optimizer`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lofi.models.encoder_checkpointing import parse_policy
from lofi.models.encoders import build_encoder
from lofi.models.heads.output import HeadOutput
from lofi.models.heads import build_head

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
