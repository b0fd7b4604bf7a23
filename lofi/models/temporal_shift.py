"""The temporal shift of TSM and the ResNet residual blocks that apply it.

Source: Lin, Gan & Han, "TSM: Temporal Shift Module for Efficient Video Understanding",
ICCV 2019 (arXiv:1811.08383), Sec. 3 and Fig. 3(b) "residual shift"; the official code is
mit-han-lab/temporal-shift-module, `ops/temporal_shift.py` (`shift_place='blockres'`,
`n_div=8`). Inside every residual block the input of the *residual branch* (not the
identity path) is shifted along time before the block's first convolution:

    channels [0, C/8)       frame t takes frame t+1's values (shift "back"/left)
    channels [C/8, 2C/8)    frame t takes frame t-1's values (shift "forward"/right)
    channels [2C/8, C)      unchanged

with zeros where the neighbour frame does not exist. The shift has no parameters and no
FLOPs. The frames of one snippet are the time axis: a batch of N snippets of T frames is
laid out as (N*T, C, H, W), frame-major within each snippet.

The blocks below subclass torchvision's `BasicBlock` / `Bottleneck` so that their
parameters keep torchvision's names (`layer1.0.conv1.weight`, ...); only `forward`
changes, and it takes the number of frames per snippet as a second argument.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.resnet import BasicBlock, Bottleneck

SHIFT_DIV = 8  # 1/8 of the channels each way (TSM paper, Sec. 3.2; official n_div=8)


def temporal_shift(x: Tensor, n_segment: int, fold_div: int = SHIFT_DIV) -> Tensor:
    """Shift 1/fold_div of the channels one frame back and 1/fold_div one frame forward.

    x: (N*T, C, H, W) with T = n_segment frames per snippet. Returns a new tensor of the
    same shape; x is not modified. Works for any T >= 1 (T = 1 zeroes the shifted
    channels) and only uses shape arithmetic, so it traces on meta / fake tensors."""
    nt, c, h, w = x.shape
    if nt % n_segment != 0:
        raise ValueError(f"temporal_shift: {nt} frames is not a multiple of n_segment={n_segment}")
    x = x.reshape(nt // n_segment, n_segment, c, h, w)  # (N, T, C, H, W)
    fold = c // fold_div
    # F.pad pads from the last dim backwards: (W, W, H, H, C, C, T_before, T_after).
    back = F.pad(x[:, 1:, :fold], (0, 0, 0, 0, 0, 0, 0, 1))  # t <- t+1, zero at the end
    forward = F.pad(x[:, :-1, fold : 2 * fold], (0, 0, 0, 0, 0, 0, 1, 0))  # t <- t-1, zero at t=0
    out = torch.cat([back, forward, x[:, :, 2 * fold :]], dim=2)  # (N, T, C, H, W)
    return out.reshape(nt, c, h, w)


class ShiftBasicBlock(BasicBlock):
    """torchvision's ResNet-18/34 block with the residual shift before conv1."""

    def forward(self, x: Tensor, n_segment: int) -> Tensor:  # type: ignore[override]
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(temporal_shift(x, n_segment))))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ShiftBottleneck(Bottleneck):
    """torchvision's ResNet-50 block with the residual shift before conv1."""

    def forward(self, x: Tensor, n_segment: int) -> Tensor:  # type: ignore[override]
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(temporal_shift(x, n_segment))))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)
