"""Spatial geometry of a clip: resize the short side, crop a square, maybe flip.

One `CropPlan` is drawn per clip and applied to every frame, so a clip stays spatially
consistent over time (as in TSM/TSN training: one crop and one flip per video). The
resize itself is done by the decoder (FFmpeg's scaler, or torchvision for JPEG frames);
this module only says to which size, and crops the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Augment:
    """Training augmentation. Scale: the short side is resized to SR x s, s uniform in
    `scale`, before an SR x SR crop (random position when `random_crop`)."""

    random_crop: bool = True
    flip: bool = True
    scale: tuple[float, float] = (1.0, 1.15)

    def __post_init__(self) -> None:
        low, high = self.scale
        if not 1.0 <= low <= high:
            raise ValueError(f"scale must satisfy 1 <= low <= high, got {self.scale}")


@dataclass(frozen=True)
class CropPlan:
    width: int  # size the frame is resized to (short side >= sr)
    height: int
    left: int  # crop origin in the resized frame
    top: int
    size: int  # SR: the crop is size x size
    flip: bool  # mirror left-right after cropping


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side equal to `short_side` and the aspect ratio
    kept (rounded; the long side is never below `short_side`)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    if width <= height:
        return short_side, max(short_side, round(height * short_side / width))
    return max(short_side, round(width * short_side / height)), short_side


def plan_crop(
    width: int,
    height: int,
    size: int,
    augment: Augment | None = None,
    rng: np.random.Generator | None = None,
) -> CropPlan:
    """Centre crop without `augment`; with it, random scale, position and flip from `rng`
    (a fresh default generator when None)."""
    if augment is None:
        new_w, new_h = resized_size(width, height, size)
        return CropPlan(new_w, new_h, (new_w - size) // 2, (new_h - size) // 2, size, False)
    rng = np.random.default_rng() if rng is None else rng
    short = int(round(size * rng.uniform(*augment.scale)))
    new_w, new_h = resized_size(width, height, max(size, short))
    if augment.random_crop:
        left = int(rng.integers(0, new_w - size + 1))
        top = int(rng.integers(0, new_h - size + 1))
    else:
        left, top = (new_w - size) // 2, (new_h - size) // 2
    flip = bool(augment.flip and rng.random() < 0.5)
    return CropPlan(new_w, new_h, left, top, size, flip)


def crop_plane(plane: np.ndarray, plan: CropPlan) -> np.ndarray:
    """(plan.height, plan.width) -> (size, size) view, mirrored when the plan flips."""
    if plane.shape != (plan.height, plan.width):
        raise ValueError(f"expected a {plan.height}x{plan.width} plane, got {plane.shape}")
    out = plane[plan.top:plan.top + plan.size, plan.left:plan.left + plan.size]
    return out[:, ::-1] if plan.flip else out
