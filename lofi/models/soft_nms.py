"""Gaussian soft-NMS over temporal proposals, vectorised with numpy.

Reproduces BMN `post_processing.py::soft_nms` (Bodla et al., ICCV 2017, Gaussian
variant): repeatedly take the highest-scoring remaining proposal; every other remaining
proposal whose tIoU with it exceeds low + (high - low) * width, where width is the
taken proposal's length as a fraction of the video, has its score multiplied by
exp(-tIoU^2 / alpha). BMN's defaults: alpha 0.4, low 0.5, high 0.9, top 100.

G-TAD's ActivityNet post-processing (`gtad_postprocess.py::Soft_NMS`, opts.nms_thr 0.8)
is the same loop with every overlapping proposal decayed: alpha 0.8, low = high = 0
(preset "gtad"). Differences to both loops: the last remaining proposal is also kept
(the official loops stop with one left, so for N <= top_k they return N - 1), G-TAD's
early stop at score 0 is not applied, and ties go to the earlier proposal after a
stable sort by score.

Cost: one pass over the remaining proposals per kept one, O(top_k * N)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lofi.errors import OptionError


@dataclass(frozen=True)
class SoftNmsParams:
    alpha: float = 0.4  # Gaussian decay: score *= exp(-tIoU^2 / alpha)
    low: float = 0.5  # tIoU threshold for a zero-length proposal
    high: float = 0.9  # tIoU threshold for a proposal as long as the video
    top_k: int = 100


SOFT_NMS_PRESETS = {
    "bmn": SoftNmsParams(alpha=0.4, low=0.5, high=0.9, top_k=100),  # BMN opts.py
    "gtad": SoftNmsParams(alpha=0.8, low=0.0, high=0.0, top_k=100),  # G-TAD anet opts.nms_thr
}


def soft_nms(
    proposals: np.ndarray,
    *,
    duration: float,
    alpha: float = 0.4,
    low: float = 0.5,
    high: float = 0.9,
    top_k: int = 100,
) -> np.ndarray:
    """proposals (N, 3) [start, end, score] in seconds (or any unit of `duration`) ->
    (min(N, top_k), 3) with decayed scores, in the order they were kept (descending)."""
    if alpha <= 0:
        raise OptionError(f"soft-NMS alpha must be > 0, got {alpha!r}")
    if not duration > 0:
        raise OptionError(f"soft-NMS needs a positive video duration, got {duration!r}")
    props = np.asarray(proposals, dtype=np.float64).reshape(-1, 3)
    order = np.argsort(-props[:, 2], kind="stable")
    starts, ends, scores = (props[order, i].copy() for i in range(3))
    lengths = ends - starts
    alive = np.ones(len(props), dtype=bool)
    kept = []
    for _ in range(min(int(top_k), len(props))):
        i = int(np.argmax(np.where(alive, scores, -np.inf)))
        kept.append((starts[i], ends[i], scores[i]))
        alive[i] = False
        inter = np.clip(np.minimum(ends, ends[i]) - np.maximum(starts, starts[i]), 0.0, None)
        union = lengths + lengths[i] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        threshold = low + (high - low) * lengths[i] / duration
        decay = alive & (iou > threshold)
        scores[decay] *= np.exp(-np.square(iou[decay]) / alpha)
    return np.asarray(kept, dtype=np.float64).reshape(-1, 3)
