"""Training targets of the TAL heads (G-TAD, BMN) from ground-truth segments, and the one
anchor convention that heads, labels, losses and post-processing share.

Anchor convention (T = temporal_dim snippets over the video's normalised time [0, 1]):

* snippet i covers [i/T, (i+1)/T]; the head's features are one vector per snippet.
* confidence-map entry [d, s] (duration index d, start index s, both 0..T-1) is the
  anchor that covers snippets s..s+d, i.e. normalised time [s/T, (s+d+1)/T].
  Layout (duration, start) as in G-TAD (`gtad_lib/dataset.py::_get_match_map`) and
  BMN before its 2020 rewrite.
* the anchor is valid iff s + d + 1 <= T (LoFi: 0 <= t_s < t_e <= T; G-TAD/BMN
  `get_mask`: row d has T - d valid entries). Invalid anchors are masked in the loss
  and never proposed.
* start[i] scores a boundary at time k/T with k = i; end[j] one at time k/T with
  k = j + 1. BMN and G-TAD index ends at j/T instead, which leaves the video's last
  instant without an end score (their inference needs `end_index < tscale`); shifting by
  one snippet gives every valid anchor (d, s) its start score at start[s] and its end
  score at end[s+d].
* the target region of the boundary index k depends on the head (`BOUNDARY_REGIONS`,
  in snippets around k):
  - `bmn`: [(k-0.5)/T, (k+0.5)/T], one snippet centred on the boundary (BMN
    `dataset.py`, anchor_xmin/anchor_xmax of its 2020 code);
  - `gtad`: [(k-0.5)/T, (k+1.5)/T], two snippets (G-TAD `gtad_lib/dataset.py`,
    `_get_match_map`: anchor_xmin = gap (i - 0.5), anchor_xmax = gap (i + 1.5)).
  So start[i] covers [(i-0.5)/T, (i+0.5)/T] (bmn) or [(i-0.5)/T, (i+1.5)/T] (gtad), and
  end[j] covers [(j+0.5)/T, (j+1.5)/T] (bmn) or [(j+0.5)/T, (j+2.5)/T] (gtad).

Targets (BMN `dataset.py::_get_train_label`):
* iou_map[d, s] = max over ground truths of tIoU(anchor, gt); 0 for invalid anchors.
* start[i] (end[j]) = max over ground truths of the intersection-over-anchor between the
  boundary region above and [b - 1.5/T, b + 1.5/T] around the ground truth's start
  (end) b (BMN: gt_len_small = 3 * temporal_gap).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

BOUNDARY_REGION_SNIPPETS = 3.0  # BMN: gt_len_small = 3 * temporal_gap
# (left, right) extent in snippets of the region of boundary index k: [(k - l)/T, (k + r)/T]
BOUNDARY_REGIONS = {"bmn": (0.5, 0.5), "gtad": (0.5, 1.5)}


class Targets(NamedTuple):
    """Training targets of one video, float32 numpy."""

    start: np.ndarray  # (T,)
    end: np.ndarray  # (T,)
    iou_map: np.ndarray  # (T, T) laid out (duration, start)


def _check_temporal_dim(temporal_dim: int) -> int:
    if int(temporal_dim) != temporal_dim or temporal_dim < 1:
        raise ValueError(f"temporal_dim must be a positive integer, got {temporal_dim!r}")
    return int(temporal_dim)


def valid_anchor_mask(temporal_dim: int) -> np.ndarray:
    """(T, T) bool, [d, s] True iff anchor (duration d, start s) ends inside the video."""
    t = _check_temporal_dim(temporal_dim)
    d = np.arange(t)[:, None]
    s = np.arange(t)[None, :]
    return s + d + 1 <= t


def anchor_bounds(temporal_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised start and end time of every anchor, each (T, T) in (duration, start)
    layout; invalid anchors end past 1."""
    t = _check_temporal_dim(temporal_dim)
    d = np.arange(t, dtype=np.float64)[:, None]
    s = np.arange(t, dtype=np.float64)[None, :]
    start = np.broadcast_to(s / t, (t, t))
    end = (s + d + 1.0) / t
    return start, end


def normalised_segments(segments: np.ndarray, duration: float) -> np.ndarray:
    """(N, 2) seconds -> (N, 2) in [0, 1]: clipped to [0, duration], end >= start."""
    if not np.isfinite(duration) or duration <= 0:
        raise ValueError(f"video duration must be a positive number of seconds, got {duration!r}")
    seg = np.asarray(segments, dtype=np.float64)
    if seg.size == 0:
        return np.zeros((0, 2))
    if seg.ndim != 2 or seg.shape[1] != 2:
        raise ValueError(f"segments must have shape (N, 2), got {seg.shape}")
    seg = np.clip(seg, 0.0, duration) / duration
    return np.stack([seg[:, 0], np.maximum(seg[:, 0], seg[:, 1])], axis=1)


def interval_iou(a_start, a_end, b_start, b_end) -> np.ndarray:
    """tIoU of intervals (broadcasting): inter / (len_a + len_b - inter); 0 if both empty."""
    inter = np.maximum(np.minimum(a_end, b_end) - np.maximum(a_start, b_start), 0.0)
    union = (a_end - a_start) + (b_end - b_start) - inter
    return np.divide(inter, union, out=np.zeros(np.broadcast(inter, union).shape), where=union > 0)


def interval_ioa(a_start, a_end, b_start, b_end) -> np.ndarray:
    """Intersection over the length of interval a (BMN utils.ioa_with_anchors)."""
    inter = np.maximum(np.minimum(a_end, b_end) - np.maximum(a_start, b_start), 0.0)
    return inter / (a_end - a_start)


def make_targets(segments: np.ndarray, duration: float, temporal_dim: int, *, head: str = "bmn") -> Targets:
    """Targets for one video from its ground-truth segments (N, 2) in seconds; `head`
    picks the boundary regions (`BOUNDARY_REGIONS`)."""
    t = _check_temporal_dim(temporal_dim)
    if head not in BOUNDARY_REGIONS:
        raise ValueError(f"unknown head {head!r} for boundary labels; choose one of {', '.join(BOUNDARY_REGIONS)}")
    left, right = BOUNDARY_REGIONS[head]
    gt = normalised_segments(segments, duration)  # (G, 2)
    if len(gt) == 0:
        zeros = np.zeros(t, dtype=np.float32)
        return Targets(zeros, zeros.copy(), np.zeros((t, t), dtype=np.float32))

    gs, ge = gt[:, 0, None, None], gt[:, 1, None, None]  # (G, 1, 1)
    a_start, a_end = anchor_bounds(t)  # (T, T) each
    iou = interval_iou(a_start[None], a_end[None], gs, ge).max(axis=0)  # (T, T)
    iou_map = np.where(valid_anchor_mask(t), iou, 0.0)

    half = BOUNDARY_REGION_SNIPPETS / (2.0 * t)
    i = np.arange(t, dtype=np.float64)[None, :]  # (1, T)
    b_start, b_end = gt[:, 0, None], gt[:, 1, None]  # (G, 1)
    start = interval_ioa((i - left) / t, (i + right) / t, b_start - half, b_start + half).max(axis=0)
    k = i + 1.0  # end[j] scores the boundary index j + 1
    end = interval_ioa((k - left) / t, (k + right) / t, b_end - half, b_end + half).max(axis=0)
    return Targets(start.astype(np.float32), end.astype(np.float32), iou_map.astype(np.float32))


def targets_to_tensors(
    targets: list[Targets], device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack per-video targets: start (B, T), end (B, T), iou_map (B, T, T), float32."""
    if not targets:
        raise ValueError("targets_to_tensors needs at least one Targets")

    def stack(field: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([getattr(x, field) for x in targets])).to(device)

    return stack("start"), stack("end"), stack("iou_map")
