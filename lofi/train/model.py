"""The end-to-end LoFi model: video encoder + TAL head, clip in, head output out."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lofi.models.encoders import build_encoder
from lofi.models.heads import HeadOutput, build_head


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


def build_lofi_model(
    backbone: str,
    head: str,
    temporal_dims: Sequence[int],
    *,
    pretrained: str | None = None,
    freeze_bn: bool = True,
    checkpointing: str = "none",
    device: torch.device | str | None = None,
) -> LoFiModel:
    """The end-to-end model for a candidate: the head takes every T in `temporal_dims`
    (the TR of each fidelity of a C-LoFi cycle, or just one)."""
    encoder = build_encoder(backbone, pretrained=pretrained, freeze_bn=freeze_bn, device=device)
    encoder.set_grad_checkpointing(checkpointing)
    first, *others = dict.fromkeys(temporal_dims)  # unique, in order
    tal_head = build_head(head, in_channels=encoder.out_channels, temporal_dim=first,
                          extra_temporal_dims=tuple(others), device=device)
    return LoFiModel(encoder, tal_head)
