"""From a head's output for one video to scored proposals and ActivityNet result entries
(numpy; anchor convention in `lofi.models.labels`).

Proposal generation (BMN `main.py::BMN_inference`, G-TAD `gtad_inference.py`):
* boundary candidates: a start (end) index is a candidate if its probability is a
  strict local peak, or above 0.5 * the maximum of the sequence; the first start index
  and the last end index (the video's own boundaries) always are;
* every valid anchor (d, s) whose start index s and end index s + d are candidates is a
  proposal [s/T, (s+d+1)/T] * duration;
* score = cls * reg (G-TAD), start[s] * end[s+d] * cls * reg (BMN).

End rule (`end_rule`): `lofi` (the default) proposes every valid anchor, up to the
video's last instant. `official` reproduces the loops of BMN `post_processing`/inference
and G-TAD `gtad_inference.py` (`if end_index < tscale`, end time end_index / T): no
proposal ends after (T-1)/T, i.e. anchors with s + d + 1 = T are dropped.

Class fusion (G-TAD `gtad_postprocess.py::_gen_detection_video`, ActivityNet): each kept
proposal is paired with each of the video's top-2 classes from a video-level
classifier, score = proposal score * class score."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lofi.errors import OptionError
from lofi.models.labels import valid_anchor_mask

PEAK_FRACTION = 0.5
END_RULES = ("lofi", "official")


def boundary_candidates(prob: np.ndarray, *, always: int) -> np.ndarray:
    """(T,) bool: strict local peaks, values > 0.5 * max, and index `always`."""
    p = np.asarray(prob, dtype=np.float64)
    cand = p > PEAK_FRACTION * p.max()
    cand[1:-1] |= (p[1:-1] > p[:-2]) & (p[1:-1] > p[2:])
    cand[always] = True
    return cand


def proposals_from_output(
    start: np.ndarray, end: np.ndarray, confidence_map: np.ndarray, duration: float, head: str,
    *, end_rule: str = "lofi",
) -> np.ndarray:
    """start, end (T,), confidence_map (2, T, T) [reg, cls] x (duration, start) ->
    proposals (N, 3) [start_s, end_s, score], clipped to [0, duration], unsorted."""
    if head not in ("gtad", "bmn"):
        raise OptionError(f"unknown TAL head {head!r} for post-processing; choose gtad or bmn")
    if end_rule not in END_RULES:
        raise OptionError(f"unknown proposal end rule {end_rule!r}; choose one of {', '.join(END_RULES)}")
    start, end = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
    cmap = np.asarray(confidence_map, dtype=np.float64)
    t = start.shape[0]
    if end.shape != (t,) or cmap.shape != (2, t, t):
        raise ValueError(f"expected start/end (T,) and confidence_map (2, T, T); got {start.shape}, "
                         f"{end.shape}, {cmap.shape}")
    d, s = np.nonzero(valid_anchor_mask(t))  # valid anchors only
    e = s + d  # end index (see labels: end[j] scores time (j + 1) / T)
    keep = boundary_candidates(start, always=0)[s] & boundary_candidates(end, always=t - 1)[e]
    if end_rule == "official":
        keep &= e + 1 < t  # official loops: end_index < tscale
    d, s, e = d[keep], s[keep], e[keep]
    score = cmap[1, d, s] * cmap[0, d, s]
    if head == "bmn":
        score = score * start[s] * end[e]
    seg_start = np.clip(s / t * duration, 0.0, duration)
    seg_end = np.clip((e + 1) / t * duration, 0.0, duration)
    return np.stack([seg_start, seg_end, score], axis=1)


def proposal_entries(proposals: np.ndarray) -> list[dict]:
    """(N, 3) -> ActivityNet proposal entries [{"score", "segment": [s, e]}] (in order)."""
    return [{"score": float(sc), "segment": [float(a), float(b)]} for a, b, sc in np.asarray(proposals).reshape(-1, 3)]


def detection_entries(
    proposals: np.ndarray, class_scores: np.ndarray, class_names: Sequence[str], top_k_classes: int = 2
) -> list[dict]:
    """Each proposal x each of the top_k_classes best classes of the video:
    [{"label", "score": proposal score * class score, "segment"}], class by class."""
    scores = np.asarray(class_scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(class_names):
        raise ValueError(f"{len(scores)} class scores but {len(class_names)} class names")
    best = np.argsort(-scores, kind="stable")[: max(0, int(top_k_classes))]
    return [
        {"label": str(class_names[k]), "score": entry["score"] * float(scores[k]), "segment": entry["segment"]}
        for k in best
        for entry in proposal_entries(proposals)
    ]
