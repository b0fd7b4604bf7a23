"""Temporal intersection over union of segments.

Reproduces activitynet/ActivityNet `Evaluation/utils.py::segment_iou` operation for
operation, so that a tIoU that lands exactly on a threshold (0.5, 0.75, ...) falls on the
same side of it as in the official code:
    inter = max(0, min(e1, e2) - max(s1, s2))
    union = (e_gt - s_gt) + (e_pred - s_pred) - inter
    tIoU  = inter / union
Two zero-length segments give 0 / 0 = NaN, as in the official code; each evaluator then
treats NaN the way the official comparisons do (see detection.py and proposal.py).
"""

from __future__ import annotations

import numpy as np


def segment_tiou(
    pred_start: np.ndarray, pred_end: np.ndarray, gt_start: np.ndarray, gt_end: np.ndarray
) -> np.ndarray:
    """Elementwise (broadcasting) tIoU between predicted and ground-truth segments."""
    intersection = np.clip(np.minimum(pred_end, gt_end) - np.maximum(pred_start, gt_start), 0, None)
    union = (gt_end - gt_start) + (pred_end - pred_start) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        return intersection / union
