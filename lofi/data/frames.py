"""Clips from a folder of pre-extracted JPEG frames (`<id>/img_00001.jpg`, ...), with
the same sampling and output as video files: (TR, F, 3, SR, SR) uint8.

A folder has no timestamps: frame i (0-based) is shown at i / fps, where fps is the
annotation's `fps`, else frames / duration, else sampling.DEFAULT_FPS. JPEGs are decoded
by torchvision.io (libjpeg-turbo) and resized with antialiasing by torchvision.
Each needed JPEG is decoded once, however many targets share it.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms.v2 import functional as tvf

from lofi.data.media_source import MediaInfo
from lofi.data.clip_times import DEFAULT_FPS, STRIDE, check_stride, nearest_frames, snippet_times
from lofi.data.transforms import Augment, CropPlan, plan_crop
from lofi.errors import VideoDecodeError
from planner.fidelity import Fidelity

_FRAME_NAME = re.compile(r"^img_(\d+)\.jpe?g$", re.IGNORECASE)


def list_frames(folder: str | Path) -> list[Path]:
    """The folder's `img_<number>.jpg` files in frame-number order."""
    folder = Path(folder)
    try:
        names = [(int(match.group(1)), entry.name) for entry in folder.iterdir()
                 if (match := _FRAME_NAME.match(entry.name))]
    except OSError as error:
        raise VideoDecodeError(f"{folder}: cannot list the frame folder ({error})") from None
    if not names:
        raise VideoDecodeError(f"{folder}: no img_<number>.jpg frames in the folder")
    return [folder / name for _, name in sorted(names)]


def frame_rate(count: int, *, duration: float | None, fps: float | None) -> float:
    """Rate at which a folder of `count` frames is played (see the module docstring)."""
    if fps is not None and fps > 0:
        return float(fps)
    if duration is not None and duration > 0:
        return count / duration
    return DEFAULT_FPS


def probe_frames(folder: str | Path, *, fps: float | None = None) -> MediaInfo:
    """Count the frames and decode the first one. Duration is known only with `fps`."""
    files = list_frames(folder)
    first = _decode(files[0])  # (3, H, W)
    duration = len(files) / fps if fps else None
    return MediaInfo(duration, fps, len(files), int(first.shape[2]), int(first.shape[1]))


def read_frames_clip(
    folder: str | Path,
    fidelity: Fidelity,
    *,
    duration: float | None = None,
    fps: float | None = None,
    augment: Augment | None = None,
    rng: np.random.Generator | None = None,
    stride: int = STRIDE,
) -> torch.Tensor:
    """(TR, F, 3, SR, SR) uint8 clip from a frame folder; each JPEG is decoded once.
    stride: frames between the frames of a snippet (OptionError when < 1)."""
    stride = check_stride(stride)
    files = list_frames(folder)
    rate = frame_rate(len(files), duration=duration, fps=fps)
    span = duration if duration is not None and duration > 0 else len(files) / rate
    targets = snippet_times(span, rate, fidelity.tr, fidelity.frames_per_snippet, stride)  # (TR, F)
    chosen = nearest_frames(targets, np.arange(len(files)) / rate)  # (TR, F) frame indices
    unique, inverse = np.unique(chosen, return_inverse=True)

    plan: CropPlan | None = None
    images = []
    for index in unique:
        image = _decode(files[index])  # (3, H, W)
        if plan is None:  # one crop for the clip, from the first frame's size
            plan = plan_crop(image.shape[2], image.shape[1], fidelity.sr, augment, rng)
        images.append(_crop(image, plan))
    stacked = torch.stack(images)  # (U, 3, SR, SR)
    clip = stacked[torch.from_numpy(inverse.reshape(-1))]  # (TR*F, 3, SR, SR)
    return clip.reshape(fidelity.tr, fidelity.frames_per_snippet, 3, fidelity.sr, fidelity.sr)


def _decode(path: Path) -> torch.Tensor:
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its codecs in favour of TorchCodec (not a
            # dependency here) and warns on every call; they work, so that is silenced.
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB)  # (3, H, W) uint8
    except (RuntimeError, OSError, ValueError) as error:
        raise VideoDecodeError(f"{path}: cannot decode the JPEG frame ({error})") from None


def _crop(image: torch.Tensor, plan: CropPlan) -> torch.Tensor:
    """(3, H, W) -> (3, SR, SR): resize to the plan's size, crop, maybe flip."""
    if tuple(image.shape[1:]) != (plan.height, plan.width):
        image = tvf.resize(image, [plan.height, plan.width], antialias=True)
    out = image[:, plan.top:plan.top + plan.size, plan.left:plan.left + plan.size]
    return out.flip(-1) if plan.flip else out
