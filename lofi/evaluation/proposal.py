"""ActivityNet proposals: average recall against average number of proposals (AR@AN), AUC.

Reproduces activitynet/ActivityNet `Evaluation/eval_proposal.py`
(`average_recall_vs_avg_nr_proposals` and `ANETproposal.evaluate`), arithmetic included:
- videos are those of the subset with at least one annotated segment (V of them);
  P = proposals of the subset's videos; AN_max = `max_proposals` (official default when
  None: P / V);
- ratio = AN_max * V / P; a video with n proposals keeps its first
  min(int(n * ratio), n) in the order `np.argsort(scores)[::-1]`; K = total kept;
- pcn_j = j / 100 * (AN_max * V / K), j = 1..100; at step j a video with k kept proposals
  uses its first min(int(k * pcn_j), k);
- a ground-truth segment is recalled at tIoU threshold t if one of those proposals has
  tIoU >= t (NaN, from two zero-length segments, is not >= t, so it never counts);
  recall = recalled / all segments; AR = mean over thresholds;
- proposals per video AN_j = pcn_j * K / V; AUC = trapezoid area of AR over AN, divided
  by the last AN (the official code prints it x 100).
AR@k is AR at AN = k, i.e. index j = 100 k / AN_max (the BMN convention: with
AN_max = 100, AR@1 is the first point, AR@100 the last); None if AN = k is not on the grid.

Deliberate differences: proposals for videos outside the subset are dropped and counted
(the official code counts them in P); no proposals at all gives zeros (the official code
divides by zero).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lofi.errors import InputFileError, OptionError
from lofi.evaluation.inputs import (
    DEFAULT_TIOU_THRESHOLDS,
    as_ground_truth,
    as_predictions,
    check_thresholds,
    map_to_subset,
)
from lofi.evaluation.io import GroundTruth, Predictions
from lofi.evaluation.common import descending_order_within_groups, ragged_arange, segment_tiou

AR_AT = (1, 5, 10, 100)
_STEPS = 100  # recall is measured at 1 %, 2 %, ..., 100 % of the kept proposals


@dataclass(frozen=True, eq=False)
class ProposalResult:
    subset: str
    tiou_thresholds: tuple[float, ...]
    max_proposals: float  # AN_max
    recall: np.ndarray  # (T, 100) recall per threshold and step
    avg_recall: np.ndarray  # (100,) mean over thresholds
    proposals_per_video: np.ndarray  # (100,) AN at each step
    auc: float  # area under AR-AN divided by the last AN, in [0, 1]
    ar_at: dict[int, float | None]  # AR@k for k in AR_AT
    videos: int  # annotated videos of the subset
    ground_truth: int  # annotated segments
    proposals: int  # proposals of the subset's videos (before truncation)
    ignored_outside_subset: int

    def to_json(self) -> dict:
        """The `lofi eval --proposals --json` object; fractions in [0, 1]."""
        out: dict = {"task": "proposal", "subset": self.subset}
        out.update({f"AR@{k}": self.ar_at[k] for k in AR_AT})
        out.update(
            {
                "AUC": self.auc,
                "avg_recall": [float(x) for x in self.avg_recall],
                "proposals_per_video": [float(x) for x in self.proposals_per_video],
                "tiou_thresholds": list(self.tiou_thresholds),
                "max_proposals": self.max_proposals,
                "videos": self.videos,
                "ground_truth": self.ground_truth,
                "proposals": self.proposals,
                "ignored_outside_subset": self.ignored_outside_subset,
            }
        )
        return out


def evaluate_proposals(
    ground_truth: GroundTruth | Mapping,
    proposals: Predictions | Mapping,
    subset: str | None = None,
    tiou_thresholds: Sequence[float] = DEFAULT_TIOU_THRESHOLDS,
    max_proposals: float | None = 100,
) -> ProposalResult:
    """AR@AN and AUC of class-agnostic `proposals` (labels, if any, are ignored) against the
    `subset` of `ground_truth`; inputs as for `evaluate_detection`."""
    gt = as_ground_truth(ground_truth, subset)
    pred = as_predictions(proposals)
    thresholds = check_thresholds(tiou_thresholds)
    if max_proposals is not None and not max_proposals > 0:
        raise OptionError(f"the maximum average number of proposals must be > 0, got {max_proposals}")
    if len(gt) == 0:
        raise InputFileError(f"{gt.source}: subset {gt.subset!r} has no annotated segment")
    video, outside = map_to_subset(gt, pred)
    in_subset = np.flatnonzero(video >= 0)  # (P,) file order
    n_total = int(in_subset.size)
    annotated = np.unique(gt.video)  # the official `video_lst`
    n_videos = int(annotated.size)
    an_max = n_total / n_videos if max_proposals is None else max_proposals

    recall = np.zeros((thresholds.size, _STEPS))
    ppv = np.arange(1, _STEPS + 1) / 100.0 * an_max  # nominal AN axis when nothing is kept
    kept_total = 0
    if n_total:
        ratio = an_max * float(n_videos) / n_total
        kept_total, first_hit, cutoff = _first_hits(gt, video, in_subset, pred, ratio, thresholds)
    if kept_total:
        pcn = np.arange(1, _STEPS + 1) / 100.0 * (an_max * float(n_videos) / kept_total)
        kept = cutoff  # (V_all,) kept proposals per subset video
        steps = np.minimum((kept[:, None] * pcn[None, :]).astype(np.int64), kept[:, None])
        steps_of_gt = steps[gt.video]  # (N, 100)
        # first_hit: (N, T) rank of the first proposal reaching the threshold.
        recalled = first_hit[:, :, None] < steps_of_gt[:, None, :]  # (N, T, 100)
        recall = recalled.sum(axis=0) / float(len(gt))  # (T, 100)
        ppv = pcn * (float(kept_total) / n_videos)
    avg_recall = recall.mean(axis=0)
    area = float(np.add.reduce(np.diff(ppv) * (avg_recall[1:] + avg_recall[:-1]) / 2.0))
    return ProposalResult(
        subset=gt.subset,
        tiou_thresholds=tuple(float(t) for t in thresholds),
        max_proposals=float(an_max),
        recall=recall,
        avg_recall=avg_recall,
        proposals_per_video=ppv,
        auc=area / float(ppv[-1]) if kept_total else 0.0,
        ar_at={k: _ar_at(avg_recall, an_max, k) for k in AR_AT},
        videos=n_videos,
        ground_truth=len(gt),
        proposals=n_total,
        ignored_outside_subset=outside,
    )


def _first_hits(
    gt: GroundTruth,
    video: np.ndarray,
    in_subset: np.ndarray,
    pred: Predictions,
    ratio: float,
    thresholds: np.ndarray,
) -> tuple[int, np.ndarray, np.ndarray]:
    """(K, first_hit (N, T), kept (V_all,)): how many proposals are kept in all, per ground
    truth and threshold the rank of the first kept proposal with tIoU >= threshold
    (a large number if none), and the kept count of every subset video."""
    n_videos_all = len(gt.video_ids)
    has_gt = np.zeros(n_videos_all, dtype=bool)
    has_gt[gt.video] = True
    rows = in_subset[has_gt[video[in_subset]]]  # proposals of annotated videos, file order
    order = rows[descending_order_within_groups(video[rows], pred.score[rows])]  # (R,)
    v = video[order]
    count = np.bincount(v, minlength=n_videos_all)  # (V_all,)
    kept = np.minimum((count * ratio).astype(np.int64), count)  # official int(n * ratio)
    begin = np.cumsum(count) - count
    rank = np.arange(order.size) - begin[v]  # (R,) rank inside the video
    keep = rank < kept[v]
    order, v, rank = order[keep], v[keep], rank[keep]
    kept_begin = np.cumsum(kept) - kept  # where each video's kept proposals begin

    big = np.iinfo(np.int64).max
    first_hit = np.full((len(gt), thresholds.size), big, dtype=np.int64)  # (N, T)
    with_pairs = np.flatnonzero(kept[gt.video] > 0)  # ground truths with kept proposals
    if with_pairs.size:
        g_of_pair, slot = ragged_arange(kept_begin[gt.video[with_pairs]], kept[gt.video[with_pairs]])
        g = with_pairs[g_of_pair]  # (Q,) ground truth of each pair, grouped, rank ascending
        tiou = segment_tiou(pred.start[order[slot]], pred.end[order[slot]], gt.start[g], gt.end[g])
        hit = tiou[:, None] >= thresholds[None, :]  # (Q, T); NaN is never a hit
        key = np.where(hit, rank[slot][:, None], big)
        seg_start = np.cumsum(kept[gt.video[with_pairs]]) - kept[gt.video[with_pairs]]
        first_hit[with_pairs] = np.minimum.reduceat(key, seg_start, axis=0)
    return int(kept.sum()), first_hit, kept


def _ar_at(avg_recall: np.ndarray, an_max: float, k: int) -> float | None:
    step = 100.0 * k / an_max
    index = round(step)
    if abs(step - index) > 1e-9 or not 1 <= index <= _STEPS:
        return None
    return float(avg_recall[index - 1])
