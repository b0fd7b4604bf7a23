"""What every temporal-action-localization head returns (`lofi.models.heads` builds them;
the anchor convention of the map is in `lofi.models.labels`)."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class HeadOutput(NamedTuple):
    start: Tensor  # (B, T) start-boundary probability
    end: Tensor  # (B, T) end-boundary probability
    confidence_map: Tensor  # (B, 2, T, T): [IoU regression, classification] x (duration, start)
