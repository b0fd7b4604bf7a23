"""What detection and proposal evaluation share: the tIoU of segments, ragged ranges and
the official code's descending order within groups.

tIoU. Reproduces activitynet/ActivityNet `Evaluation/utils.py::segment_iou` operation for
operation, so that a tIoU that lands exactly on a threshold (0.5, 0.75, ...) falls on the
same side of it as in the official code:
    inter = max(0, min(e1, e2) - max(s1, s2))
    union = (e_gt - s_gt) + (e_pred - s_pred) - inter
    tIoU  = inter / union
Two zero-length segments give 0 / 0 = NaN, as in the official code; each evaluator then
treats NaN the way the official comparisons do (see detection.py and proposal.py).

Ragged ranges: the index arithmetic behind "every pair of a prediction and the ground
truths of its video" without a Python loop.

Order: descending by score within groups, exactly as the official evaluation orders. The
official code sorts with `np.argsort(values)[::-1]` (activitynet/ActivityNet
`Evaluation/eval_detection.py`: predictions of a class by score, ground truths of a video by
tIoU; `eval_proposal.py`: proposals of a video by score). numpy's default argsort is not
stable (on x86 it is a SIMD sorting network), so tied values come out in an order that
depends on the whole array, and that order changes the numbers. To agree on every input,
groups whose ties matter are ordered by the very same call on the very same array (the
group's values in input order); groups without such ties take a fast global sort, which
gives the same order because distinct values have only one descending order.
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


def ragged_arange(starts: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated ranges [starts[i], starts[i] + sizes[i]).

    Returns (owner, values), both (sum(sizes),): owner[j] is the i whose range holds j.
    """
    starts = np.asarray(starts, dtype=np.int64)
    sizes = np.asarray(sizes, dtype=np.int64)
    owner = np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)
    offsets = np.cumsum(sizes) - sizes  # (n,) where each range begins in the output
    values = starts[owner] + (np.arange(owner.size, dtype=np.int64) - offsets[owner])
    return owner, values


def descending_order_within_groups(
    group: np.ndarray, values: np.ndarray, tie_matters: np.ndarray | None = None
) -> np.ndarray:
    """Permutation of the rows: groups ascending; inside a group, the order of
    `np.argsort(values[rows of the group, in input order])[::-1]`.

    group: (N,) int, values: (N,) float, tie_matters: (N,) bool or None (all ties matter).
    A group is re-sorted exactly when it holds a NaN (argsort puts NaN last, so the
    reversal puts it first) or two equal values whose rows both have tie_matters set.
    """
    group = np.asarray(group)
    values = np.asarray(values, dtype=np.float64)
    if group.size == 0:
        return np.zeros(0, dtype=np.int64)
    by_group = np.argsort(group, kind="stable")  # (N,) rows grouped, input order inside
    # Stable lexsort: group ascending, then value descending (NaN last).
    order = np.lexsort((-values, group))  # (N,)
    sorted_group = group[order]
    sorted_values = values[order]
    same_group = sorted_group[1:] == sorted_group[:-1]
    tied = same_group & (sorted_values[1:] == sorted_values[:-1])
    if tie_matters is not None:
        relevant = np.asarray(tie_matters, dtype=bool)[order]
        tied &= relevant[1:] & relevant[:-1]
    flagged = np.union1d(sorted_group[1:][tied], sorted_group[np.isnan(sorted_values)])
    if flagged.size:
        starts = np.searchsorted(sorted_group, flagged, side="left")
        stops = np.searchsorted(sorted_group, flagged, side="right")
        for lo, hi in zip(starts.tolist(), stops.tolist()):
            rows = by_group[lo:hi]  # input order
            order[lo:hi] = rows[np.argsort(values[rows])[::-1]]
    return order
