"""ActivityNet detection: AP per class and tIoU threshold, mAP, average mAP.

Reproduces activitynet/ActivityNet `Evaluation/eval_detection.py`
(`compute_average_precision_detection`) and `utils.py::interpolated_prec_rec`:
- per class, predictions are visited in the order `np.argsort(scores)[::-1]`;
- a prediction is matched, at each threshold separately, to the first ground truth of its
  video and class, in the order `np.argsort(tious)[::-1]`, that is not yet matched
  ("locked") at that threshold; it is a false positive as soon as that order reaches a
  tIoU below the threshold. A NaN tIoU (two zero-length segments) sorts first and is not
  below any threshold, so it matches, as in the official code;
- AP is the VOC 2011 interpolated area: precision made non-increasing from the right,
  summed over the points where recall changes;
- mAP is the mean over every class of the subset's ground truth (a class without
  predictions has AP 0); average mAP is the mean over thresholds.
The matching is sequential only inside one (video, class) group, so it runs as a loop
over the k-th candidate prediction of every group at once (vectorised over groups and
thresholds) instead of a loop over predictions.

Deliberate difference: predictions for videos outside the subset are dropped and counted
(the official code scores them as false positives).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lofi.evaluation.inputs import (
    DEFAULT_TIOU_THRESHOLDS,
    as_ground_truth,
    as_predictions,
    check_thresholds,
    map_to_subset,
)
from lofi.evaluation.io import GroundTruth, Predictions
from lofi.evaluation.common import descending_order_within_groups, ragged_arange, segment_tiou
from lofi.errors import InputFileError

@dataclass(frozen=True, eq=False)
class DetectionResult:
    subset: str
    tiou_thresholds: tuple[float, ...]
    classes: tuple[str, ...]
    ap: np.ndarray  # (T, C) AP per threshold and class, fractions
    mAP: np.ndarray  # (T,)
    average_mAP: float
    videos: int  # videos of the subset
    ground_truth: int  # annotated segments of the subset
    predictions: int  # predictions evaluated
    ground_truth_per_class: np.ndarray  # (C,) int
    predictions_per_class: np.ndarray  # (C,) int
    ignored_outside_subset: int
    ignored_unknown_labels: int

    def to_json(self, per_class: bool = False) -> dict:
        """The `lofi eval --json` object; fractions in [0, 1]."""
        out = {
            "task": "detection",
            "subset": self.subset,
            "tiou_thresholds": list(self.tiou_thresholds),
            "mAP": [float(x) for x in self.mAP],
            "average_mAP": float(self.average_mAP),
            "videos": self.videos,
            "ground_truth": self.ground_truth,
            "predictions": self.predictions,
            "ignored_outside_subset": self.ignored_outside_subset,
            "ignored_unknown_labels": self.ignored_unknown_labels,
        }
        if per_class:
            out["per_class"] = {
                name: {
                    "AP": [float(x) for x in self.ap[:, c]],
                    "average_AP": float(self.ap[:, c].mean()),
                    "ground_truth": int(self.ground_truth_per_class[c]),
                    "predictions": int(self.predictions_per_class[c]),
                }
                for c, name in enumerate(self.classes)
            }
        return out


def evaluate_detection(
    ground_truth: GroundTruth | Mapping,
    predictions: Predictions | Mapping,
    subset: str | None = None,
    tiou_thresholds: Sequence[float] = DEFAULT_TIOU_THRESHOLDS,
    ignore_unknown_labels: bool = False,
) -> DetectionResult:
    """Detection mAP of `predictions` against the `subset` of `ground_truth`.

    Both may be loaded dataclasses (`load_ground_truth`, `load_predictions`) or the parsed
    JSON dicts. `subset` defaults to "validation" for a dict and to the loaded subset for
    a GroundTruth. A predicted label that is not a class of the subset is an error unless
    `ignore_unknown_labels`, which drops and counts it.
    """
    gt = as_ground_truth(ground_truth, subset)
    pred = as_predictions(predictions)
    thresholds = check_thresholds(tiou_thresholds)
    if len(gt) == 0:
        raise InputFileError(f"{gt.source}: subset {gt.subset!r} has no annotated segment")
    video, outside = map_to_subset(gt, pred)
    label, unknown = _map_labels(gt, pred, video >= 0, ignore_unknown_labels)
    kept = np.flatnonzero((video >= 0) & (label >= 0))  # (P',) file order

    n_classes = len(gt.classes)
    # Rows sorted by class, then by score as the official argsort orders them.
    order = kept[descending_order_within_groups(label[kept], pred.score[kept])]  # (P',)
    s_video, s_label = video[order], label[order]
    tp = _match(gt, s_video, s_label, pred.start[order], pred.end[order], thresholds)  # (T, P')

    per_class = np.bincount(s_label, minlength=n_classes)  # (C,)
    gt_per_class = np.bincount(gt.label, minlength=n_classes)  # (C,)
    bounds = np.concatenate([[0], np.cumsum(per_class)])
    ap = np.zeros((len(thresholds), n_classes))  # (T, C)
    for c in range(n_classes):
        if per_class[c]:
            ap[:, c] = interpolated_average_precision(
                tp[:, bounds[c] : bounds[c + 1]], int(gt_per_class[c])
            )
    mean_ap = ap.mean(axis=1)
    return DetectionResult(
        subset=gt.subset,
        tiou_thresholds=tuple(float(t) for t in thresholds),
        classes=gt.classes,
        ap=ap,
        mAP=mean_ap,
        average_mAP=float(mean_ap.mean()),
        videos=len(gt.video_ids),
        ground_truth=len(gt),
        predictions=int(order.size),
        ground_truth_per_class=gt_per_class,
        predictions_per_class=per_class,
        ignored_outside_subset=outside,
        ignored_unknown_labels=unknown,
    )


def interpolated_average_precision(tp: np.ndarray, n_positives: int) -> np.ndarray:
    """VOC 2011 interpolated AP of ranked hits, per row (ActivityNet `utils.py::
    interpolated_prec_rec`). tp: (T, n) bool in rank order; returns (T,)."""
    tp_cum = np.cumsum(tp, axis=1, dtype=np.float64)  # (T, n)
    fp_cum = np.cumsum(~tp, axis=1, dtype=np.float64)
    recall = tp_cum / n_positives
    precision = tp_cum / (tp_cum + fp_cum)
    rows = tp.shape[0]
    mprec = np.hstack([np.zeros((rows, 1)), precision, np.zeros((rows, 1))])  # (T, n + 2)
    mrec = np.hstack([np.zeros((rows, 1)), recall, np.ones((rows, 1))])
    mprec = np.maximum.accumulate(mprec[:, ::-1], axis=1)[:, ::-1]  # non-increasing
    ap = np.empty(rows)
    for t in range(rows):
        idx = np.flatnonzero(mrec[t, 1:] != mrec[t, :-1]) + 1
        ap[t] = np.sum((mrec[t, idx] - mrec[t, idx - 1]) * mprec[t, idx])
    return ap


def _map_labels(
    gt: GroundTruth, pred: Predictions, in_subset: np.ndarray, ignore_unknown: bool
) -> tuple[np.ndarray, int]:
    """Class index of every prediction (-1: unknown), and how many unknown ones in the
    subset were dropped. Raises on a missing label, or an unknown one unless ignored."""
    unlabelled = np.flatnonzero(in_subset & (pred.label < 0))
    if unlabelled.size:
        raise InputFileError(
            f"{pred.source}: {pred.entry_name(int(unlabelled[0]))} has no label; detection "
            f"needs one ({unlabelled.size} such entries); evaluate class-agnostic proposals "
            "with --proposals"
        )
    index = {name: c for c, name in enumerate(gt.classes)}
    table = np.array([index.get(name, -1) for name in pred.labels] + [-1], dtype=np.int64)
    label = table[pred.label]  # pred.label == -1 picks the trailing -1
    unknown = np.flatnonzero(in_subset & (label < 0))
    if unknown.size and not ignore_unknown:
        row = int(unknown[0])
        names = sorted({pred.labels[i] for i in np.unique(pred.label[unknown])})
        shown = ", ".join(map(repr, names[:5])) + (", ..." if len(names) > 5 else "")
        raise InputFileError(
            f"{pred.source}: {pred.entry_name(row)} has label "
            f"{pred.labels[int(pred.label[row])]!r}, which is not a class of the ground "
            f"truth subset {gt.subset!r} ({unknown.size} predictions with unknown labels: "
            f"{shown}); use --ignore-unknown-labels to drop them"
        )
    return label, int(unknown.size)


def _match(
    gt: GroundTruth,
    video: np.ndarray,
    label: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    thresholds: np.ndarray,
) -> np.ndarray:
    """True positives (T, P) of predictions given in rank order within each class.

    Greedy matching is sequential only inside a (class, video) group, so step k handles
    the k-th candidate prediction of every group at once, for all thresholds."""
    tp = np.zeros((thresholds.size, video.size), dtype=bool)
    pair_row, pair_gt, tiou = _usable_pairs(gt, video, label, start, end, thresholds.min())
    if pair_row.size == 0:
        return tp
    # Candidate rows in rank order, each with its usable pairs (best first) contiguous.
    cand, cand_first, cand_size = np.unique(pair_row, return_index=True, return_counts=True)
    step = _position_in_group(cand, gt.label[pair_gt[cand_first]] * len(gt.video_ids)
                              + gt.video[pair_gt[cand_first]])
    locked = np.zeros((thresholds.size, len(gt)), dtype=bool)  # (T, N)
    eligible_tiou = ~(tiou[None, :] < thresholds[:, None])  # (T, Q); NaN is eligible
    big = np.iinfo(np.int64).max
    schedule = np.argsort(step, kind="stable")
    boundaries = np.searchsorted(step[schedule], np.arange(step.max() + 2))
    for k in range(step.max() + 1):
        these = schedule[boundaries[k] : boundaries[k + 1]]  # at most one row per group
        first, size = cand_first[these], cand_size[these]
        _, pairs = ragged_arange(first, size)  # (q,) pair indices, row by row
        position = pairs - np.repeat(first, size)  # preference rank inside the row
        free = eligible_tiou[:, pairs] & ~locked[:, pair_gt[pairs]]  # (T, q)
        seg_start = np.cumsum(size) - size
        best = np.minimum.reduceat(np.where(free, position, big), seg_start, axis=1)  # (T, n_k)
        t_hit, r_hit = np.nonzero(best < big)
        locked[t_hit, pair_gt[first[r_hit] + best[t_hit, r_hit]]] = True
        tp[t_hit, cand[these][r_hit]] = True
    return tp


def _usable_pairs(
    gt: GroundTruth,
    video: np.ndarray,
    label: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    lowest: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, gt index, tIoU) of every prediction and ground truth of its video and class
    whose tIoU is not below the lowest threshold (NaN included: it is not below), grouped
    by row and, inside a row, in the official preference order np.argsort(tious)[::-1]."""
    empty = np.zeros(0, dtype=np.int64)
    n_videos = len(gt.video_ids)
    gt_key = gt.label * n_videos + gt.video  # (N,)
    gt_sorted = np.argsort(gt_key, kind="stable")  # file order inside a group
    keys, first, size = np.unique(gt_key[gt_sorted], return_index=True, return_counts=True)
    pred_key = label * n_videos + video  # (P,)
    g = np.minimum(np.searchsorted(keys, pred_key), keys.size - 1)
    rows = np.flatnonzero(keys[g] == pred_key)  # predictions with a ground truth to match
    if rows.size == 0:
        return empty, empty, np.zeros(0)
    owner, slot = ragged_arange(first[g[rows]], size[g[rows]])
    pair_row, pair_gt = rows[owner], gt_sorted[slot]  # (Q,)
    tiou = segment_tiou(start[pair_row], end[pair_row], gt.start[pair_gt], gt.end[pair_gt])
    usable = ~(tiou < lowest)
    # The official order is over the whole row; ties matter only between usable pairs.
    pref = descending_order_within_groups(pair_row, tiou, tie_matters=usable)
    pref = pref[usable[pref]]
    return pair_row[pref], pair_gt[pref], tiou[pref]


def _position_in_group(rows: np.ndarray, group: np.ndarray) -> np.ndarray:
    """For rows ascending, the index of each row among the rows of its group."""
    by_group = np.lexsort((rows, group))
    sorted_group = group[by_group]
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    position = np.arange(rows.size) - np.repeat(starts, np.diff(np.r_[starts, rows.size]))
    out = np.empty(rows.size, dtype=np.int64)
    out[by_group] = position
    return out
