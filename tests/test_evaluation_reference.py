"""The vectorised evaluators against a plain loop over predictions written from the
algorithm's description (shared/PAPER.md, the official code's docstrings), on random
inputs full of ties, duplicate and zero-length segments. Both order ties with
`np.argsort(values)[::-1]` on the same arrays, so they must agree on any CPU. Also the
small building blocks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lofi.evaluation import DEFAULT_TIOU_THRESHOLDS, evaluate_detection, evaluate_proposals
from lofi.evaluation.common import descending_order_within_groups, ragged_arange, segment_tiou

THRESHOLDS = list(DEFAULT_TIOU_THRESHOLDS)


def tiou(s1: float, e1: float, s2: float, e2: float) -> float:
    """Prediction (s1, e1) against ground truth (s2, e2), same operations as official."""
    inter = max(0.0, min(e1, e2) - max(s1, s2))
    union = (e2 - s2) + (e1 - s1) - inter
    return inter / union if union != 0 else math.nan


def voc_ap(hits: list[bool], n_positives: int) -> float:
    precision, recall, found = [], [], 0
    for rank, hit in enumerate(hits, start=1):
        found += hit
        precision.append(found / rank)
        recall.append(found / n_positives)
    mprec, mrec = [0.0] + precision + [0.0], [0.0] + recall + [1.0]
    for i in range(len(mprec) - 2, -1, -1):
        mprec[i] = max(mprec[i], mprec[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mprec[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


def reference_detection(gt: list, pred: list, thresholds: list[float]) -> np.ndarray:
    """gt: [(video, s, e, label)], pred: [(video, s, e, label, score)], file order.
    Returns AP (T, C), classes in order of first appearance in gt."""
    classes = list(dict.fromkeys(g[3] for g in gt))
    ap = np.zeros((len(thresholds), len(classes)))
    for c, name in enumerate(classes):
        truths = [g for g in gt if g[3] == name]
        mine = [p for p in pred if p[3] == name]
        if not mine:
            continue
        ranked = [mine[i] for i in np.argsort(np.array([p[4] for p in mine]))[::-1]]
        taken = np.zeros((len(thresholds), len(truths)), dtype=bool)
        hits = np.zeros((len(thresholds), len(ranked)), dtype=bool)
        for r, (video, s, e, _, _) in enumerate(ranked):
            same_video = [j for j, g in enumerate(truths) if g[0] == video]
            if not same_video:
                continue
            overlaps = np.array([tiou(s, e, truths[j][1], truths[j][2]) for j in same_video])
            preference = np.argsort(overlaps)[::-1]
            for t, threshold in enumerate(thresholds):
                for k in preference:
                    if overlaps[k] < threshold:
                        break
                    if not taken[t, same_video[k]]:
                        taken[t, same_video[k]] = hits[t, r] = True
                        break
        for t in range(len(thresholds)):
            ap[t, c] = voc_ap(hits[t].tolist(), len(truths))
    return ap


def reference_recall(gt: list, pred: list, subset_videos: list, thresholds: list[float], an_max: float):
    """Official AR-AN steps as a loop over videos; returns (recall (T, 100), AN (100,))."""
    annotated = list(dict.fromkeys(g[0] for g in gt))
    in_subset = [p for p in pred if p[0] in subset_videos]
    ratio = an_max * float(len(annotated)) / len(in_subset)
    kept_per_video, total = {}, 0
    for video in annotated:
        mine = [p for p in in_subset if p[0] == video]
        ranked = [mine[i] for i in np.argsort(np.array([p[4] for p in mine]))[::-1]] if mine else []
        keep = min(int(len(ranked) * ratio), len(ranked))
        kept_per_video[video] = ranked[:keep]
        total += keep
    if total == 0:
        return None, None  # the official code divides by zero here
    pcn = np.arange(1, 101) / 100.0 * (an_max * float(len(annotated)) / total)
    recall = np.zeros((len(thresholds), 100))
    for t, threshold in enumerate(thresholds):
        for j in range(100):
            found = 0
            for s2_video, s2, e2, _ in gt:
                kept = kept_per_video[s2_video]
                use = min(int(len(kept) * pcn[j]), len(kept))
                found += any(tiou(p[1], p[2], s2, e2) >= threshold for p in kept[:use])
            recall[t, j] = found / len(gt)
    return recall, pcn * (float(total) / len(annotated))


def random_case(seed: int):
    """A few videos on a coarse time grid (so tIoUs and scores tie), three classes."""
    rng = np.random.default_rng(seed)
    gt, pred = [], []
    videos = [f"v{j}" for j in range(int(rng.integers(1, 6)))]
    for video in videos:
        for _ in range(int(rng.integers(1, 5))):
            s = float(rng.integers(0, 10))
            gt.append((video, s, s + float(rng.integers(0, 6)), "ABC"[int(rng.integers(0, 3))]))
        if rng.random() < 0.3:
            gt.append(gt[-1])  # a duplicate annotation
    for video in videos + ["v_unannotated"]:
        truths = [g for g in gt if g[0] == video] or [(video, 0.0, 5.0, "A")]
        for _ in range(int(rng.integers(0, 25))):
            _, s, e, label = truths[int(rng.integers(0, len(truths)))]
            a = s + float(rng.integers(-2, 3))
            b = max(a, e + float(rng.integers(-2, 3)))
            if rng.random() < 0.2:
                label = "ABC"[int(rng.integers(0, 3))]
            if label in {g[3] for g in gt}:
                pred.append((video, a, b, label, float(rng.integers(1, 4)) / 4))
    return gt, pred, videos + ["v_unannotated"]


def as_json(gt: list, pred: list, videos: list) -> tuple[dict, dict]:
    database = {v: {"subset": "validation", "annotations": []} for v in videos}
    for video, s, e, label in gt:
        database[video]["annotations"].append({"segment": [s, e], "label": label})
    results: dict = {v: [] for v in videos}
    for video, s, e, label, score in pred:
        results[video].append({"segment": [s, e], "label": label, "score": score})
    return {"database": database}, {"results": results}


@pytest.mark.parametrize("seed", range(40))
def test_detection_equals_the_plain_loop(seed):
    gt, pred, videos = random_case(seed)
    gt_json, pred_json = as_json(gt, pred, videos)
    # the JSON regroups predictions by video: the loop must see that same order
    pred = [(v, e["segment"][0], e["segment"][1], e["label"], e["score"])
            for v, rows in pred_json["results"].items() for e in rows]
    result = evaluate_detection(gt_json, pred_json)
    expected = reference_detection(gt, pred, THRESHOLDS)
    np.testing.assert_allclose(result.ap, expected, rtol=0, atol=1e-12)
    assert result.average_mAP == pytest.approx(expected.mean(), abs=1e-12)


@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize("an_max", [1, 3, 100])
def test_proposals_equal_the_plain_loop(seed, an_max):
    gt, pred, videos = random_case(seed)
    if not pred:
        pytest.skip("no proposal drawn")
    gt_json, pred_json = as_json(gt, pred, videos)
    pred = [(v, e["segment"][0], e["segment"][1], None, e["score"])
            for v, rows in pred_json["results"].items() for e in rows]
    gt_flat = [(g[0], g[1], g[2], None) for g in gt]
    result = evaluate_proposals(gt_json, pred_json, max_proposals=an_max)
    expected_recall, expected_an = reference_recall(gt_flat, pred, videos, THRESHOLDS, an_max)
    if expected_recall is None:
        assert result.auc == 0.0 and not result.recall.any()
        return
    np.testing.assert_allclose(result.recall, expected_recall, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.proposals_per_video, expected_an, rtol=0, atol=1e-12)


def test_tiou_lands_on_the_threshold_as_official():
    # 0.3 / 0.6 is 0.49999999999999994 in floating point with the official operations
    value = segment_tiou(np.array(0.1), np.array(0.4), np.array(0.1), np.array(0.7))
    assert float(value) == tiou(0.1, 0.4, 0.1, 0.7)
    assert float(segment_tiou(np.array(0.0), np.array(5.0), np.array(0.0), np.array(10.0))) == 0.5
    assert np.isnan(segment_tiou(np.array(3.0), np.array(3.0), np.array(3.0), np.array(3.0)))


def test_grouped_order_reproduces_argsort_per_group_with_ties():
    rng = np.random.default_rng(0)
    group = rng.integers(0, 7, 500)
    values = rng.integers(0, 4, 500).astype(float)  # heavy ties
    values[rng.integers(0, 500, 5)] = np.nan
    order = descending_order_within_groups(group, values)
    expected = np.concatenate(
        [np.flatnonzero(group == g)[np.argsort(values[group == g])[::-1]] for g in range(7)]
    )
    assert order.tolist() == expected.tolist()


def test_grouped_order_without_relevant_ties_sorts_descending():
    group = np.array([1, 0, 1, 0, 1])
    values = np.array([0.2, 0.9, 0.7, 0.1, 0.2])
    order = descending_order_within_groups(group, values, tie_matters=values > 0.5)
    assert order.tolist()[:2] == [1, 3]
    assert order.tolist()[2] == 2 and sorted(order.tolist()[3:]) == [0, 4]


def test_ragged_arange():
    owner, values = ragged_arange(np.array([5, 0, 9]), np.array([2, 0, 3]))
    assert owner.tolist() == [0, 0, 2, 2, 2]
    assert values.tolist() == [5, 6, 9, 10, 11]
