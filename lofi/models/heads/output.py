"""What every temporal-action-localization head returns (`lofi.models.heads` builds them;
the anchor convention of the map is in `lofi.models.labels`)."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn


class HeadOutput(NamedTuple):
    start: Tensor  # (B, T) start-boundary probability
    end: Tensor  # (B, T) end-boundary probability
    confidence_map: Tensor  # (B, 2, T, T): [IoU regression, classification] x (duration, start)


class MapHead(nn.Module):
    """What G-TAD and BMN share: forward((B, C, T)) -> HeadOutput(start, end,
    confidence_map) for T in `temporal_dims` (set by the head), with weights that do not
    depend on T; `in_channels` C, `temporal_dim` the T it is built for."""

    def __init__(self, in_channels: int, temporal_dim: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.temporal_dim = temporal_dim


def grouped_conv(in_channels: int, out_channels: int, **factory) -> list[nn.Module]:
    """Conv1d(k=3, groups=4) + ReLU, the first layer of both heads (official code)."""
    return [nn.Conv1d(in_channels, out_channels, 3, padding=1, groups=4, **factory), nn.ReLU(inplace=True)]
