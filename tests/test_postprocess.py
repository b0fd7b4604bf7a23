"""Post-processing: soft-NMS by hand and against BMN's loop, proposal generation, the
targets -> perfect output -> proposals round trip, class fusion."""

from __future__ import annotations

import time

import numpy as np
import pytest

from lofi.errors import OptionError
from lofi.models.labels import interval_iou, make_targets, valid_anchor_mask
from lofi.models.postprocess import (
    boundary_candidates,
    detection_entries,
    proposal_entries,
    proposals_from_output,
)
from lofi.models.soft_nms import SOFT_NMS_PRESETS, soft_nms

# -- soft-NMS --------------------------------------------------------------------------


def test_overlapping_proposal_decays_by_gaussian():
    props = np.array([[0.0, 10.0, 0.9], [2.0, 10.0, 0.8]])
    kept = soft_nms(props, duration=100.0)
    # tIoU = 8/10 = 0.8 > 0.5 + 0.4 * 10/100 = 0.54 -> 0.8 * exp(-0.8^2 / 0.4)
    np.testing.assert_allclose(kept, [[0, 10, 0.9], [2, 10, 0.8 * np.exp(-0.64 / 0.4)]])


def test_threshold_grows_with_the_kept_proposals_width():
    # tIoU 1/3 is below the 0.54 threshold of a 10 s proposal in a 100 s video: untouched
    kept = soft_nms(np.array([[0.0, 10.0, 0.9], [5.0, 15.0, 0.8]]), duration=100.0)
    assert kept[1, 2] == pytest.approx(0.8)
    # a proposal as long as the video has threshold 0.9: tIoU 0.92 decays, 0.89 does not
    kept = soft_nms(np.array([[0.0, 100.0, 0.9], [0.0, 92.0, 0.8], [0.0, 89.0, 0.7]]), duration=100.0, top_k=2)
    assert kept[1].tolist() == [0.0, 89.0, 0.7]  # 0.8 * exp(-0.92^2 / 0.4) = 0.097 fell below it


def test_decay_reorders_and_top_k():
    props = np.array([[0.0, 10.0, 1.0], [1.0, 10.0, 0.9], [50.0, 60.0, 0.5]])
    kept = soft_nms(props, duration=100.0)
    np.testing.assert_allclose(kept[:, :2], [[0, 10], [50, 60], [1, 10]])
    assert kept[2, 2] == pytest.approx(0.9 * np.exp(-0.81 / 0.4))
    assert soft_nms(props, duration=100.0, top_k=1).shape == (1, 3)
    assert soft_nms(np.zeros((0, 3)), duration=100.0).shape == (0, 3)


def test_gtad_preset_decays_every_overlap():
    p = SOFT_NMS_PRESETS["gtad"]
    kept = soft_nms(np.array([[0.0, 10.0, 0.9], [5.0, 15.0, 0.8]]), duration=100.0,
                    alpha=p.alpha, low=p.low, high=p.high, top_k=p.top_k)
    assert kept[1, 2] == pytest.approx(0.8 * np.exp(-(1 / 3) ** 2 / 0.8))


def _bmn_soft_nms_loop(props, alpha, t1, t2, top_k):
    """BMN post_processing.soft_nms on lists (normalised times), minus pandas."""
    order = np.argsort(-props[:, 2], kind="stable")
    ts, te, sc = (list(props[order, i]) for i in range(3))
    out = []
    while len(sc) > 1 and len(out) < top_k:
        i = sc.index(max(sc))
        ious = interval_iou(np.array(ts), np.array(te), ts[i], te[i])
        for j in range(len(sc)):
            if j != i and ious[j] > t1 + (t2 - t1) * (te[i] - ts[i]):
                sc[j] = sc[j] * np.exp(-np.square(ious[j]) / alpha)
        out.append([ts.pop(i), te.pop(i), sc.pop(i)])
    return np.array(out)


def test_matches_bmn_loop_on_random_proposals():
    rng = np.random.default_rng(0)
    s = rng.uniform(0, 0.9, 400)
    props = np.stack([s, np.minimum(s + rng.uniform(0.01, 0.6, 400), 1.0), rng.uniform(0, 1, 400)], axis=1)
    ours = soft_nms(props * [60, 60, 1], duration=60.0)  # seconds in, same decisions
    ref = _bmn_soft_nms_loop(props, 0.4, 0.5, 0.9, 100)
    np.testing.assert_allclose(ours / [60, 60, 1], ref, rtol=1e-9, atol=1e-12)


def test_thousands_of_proposals_in_milliseconds():
    rng = np.random.default_rng(1)
    s = rng.uniform(0, 100, 5000)
    props = np.stack([s, np.minimum(s + rng.uniform(1, 100, 5000), 100), rng.uniform(0, 1, 5000)], axis=1)
    soft_nms(props, duration=100.0)
    t0 = time.perf_counter()
    kept = soft_nms(props, duration=100.0)
    assert len(kept) == 100
    assert time.perf_counter() - t0 < 0.5  # ~6 ms measured; generous for a shared CPU


def test_rejects_bad_parameters():
    with pytest.raises(OptionError, match="alpha must be > 0"):
        soft_nms(np.ones((2, 3)), duration=1.0, alpha=0.0)
    with pytest.raises(OptionError, match="positive video duration"):
        soft_nms(np.ones((2, 3)), duration=0.0)


# -- proposals -------------------------------------------------------------------------


def test_boundary_candidates():
    p = np.array([0.1, 0.3, 0.2, 0.9, 0.5, 0.05])
    # peaks at 1 and 3, > 0.45 at 3 and 4, plus the forced index
    np.testing.assert_array_equal(boundary_candidates(p, always=0), [1, 1, 0, 1, 1, 0])
    np.testing.assert_array_equal(boundary_candidates(p, always=5), [0, 1, 0, 1, 1, 1])


def test_proposals_only_valid_anchors_and_scores():
    t, dur = 6, 12.0
    rng = np.random.default_rng(2)
    start, end = np.ones(t), np.ones(t)  # every index is a candidate
    cmap = rng.uniform(0.1, 1, (2, t, t))
    gtad = proposals_from_output(start, end, cmap, dur, "gtad")
    assert len(gtad) == valid_anchor_mask(t).sum() == 21
    assert np.all(gtad[:, 1] <= dur) and np.all(gtad[:, 0] < gtad[:, 1])
    # anchor (d=2, s=1) covers [1/6, 4/6] of the video: [2 s, 8 s], score cls * reg
    row = gtad[(gtad[:, 0] == 2.0) & (gtad[:, 1] == 8.0)]
    np.testing.assert_allclose(row[:, 2], cmap[1, 2, 1] * cmap[0, 2, 1])
    start = rng.uniform(0.6, 1, t)
    end = rng.uniform(0.6, 1, t)
    bmn = proposals_from_output(start, end, cmap, dur, "bmn")
    row = bmn[(bmn[:, 0] == 2.0) & (bmn[:, 1] == 8.0)]
    np.testing.assert_allclose(row[:, 2], start[1] * end[3] * cmap[1, 2, 1] * cmap[0, 2, 1])
    with pytest.raises(OptionError, match="unknown TAL head 'tad'"):
        proposals_from_output(start, end, cmap, dur, "tad")


def test_boundary_filter_removes_non_candidate_starts():
    t = 8
    start = np.full(t, 0.1)
    start[3] = 0.9  # peak
    end = np.full(t, 0.1)
    end[6] = 0.9
    props = proposals_from_output(start, end, np.ones((2, t, t)), 8.0, "gtad")
    # starts: 0 (forced) and 3; ends: 6 and 7 (forced) -> times [0|3, 7|8]
    assert sorted(map(tuple, props[:, :2])) == [(0, 7), (0, 8), (3, 7), (3, 8)]


@pytest.mark.parametrize("head", ["gtad", "bmn"])
@pytest.mark.parametrize("t", [25, 50, 100])
def test_round_trip_targets_to_proposals(head, t):
    """Ground truth -> targets -> targets as a perfect model output -> proposals ->
    soft-NMS: the top proposals are the ground-truth segments."""
    dur = 200.0
    gt = np.array([[16.0, 72.0], [104.0, 160.0]])  # on the snippet grid of T = 25, 50, 100
    rng = np.random.default_rng(t)
    off_grid = gt + rng.uniform(-0.2, 0.2, gt.shape) * dur / t  # within a fifth of a snippet
    for segs, min_iou in ((gt, 0.999), (off_grid, 0.9)):
        tg = make_targets(segs, dur, t)
        cmap = np.stack([tg.iou_map, tg.iou_map])
        props = proposals_from_output(tg.start, tg.end, cmap, dur, head)
        kept = soft_nms(props, duration=dur)
        top = kept[: len(segs)]
        for s, e in segs:
            assert interval_iou(top[:, 0], top[:, 1], s, e).max() > min_iou
        assert np.all(top[:, :2] >= 0) and np.all(top[:, :2] <= dur)


# -- result entries --------------------------------------------------------------------


def test_proposal_entries():
    entries = proposal_entries(np.array([[1.0, 5.0, 0.7], [2.0, 3.0, 0.2]]))
    assert entries == [{"score": 0.7, "segment": [1.0, 5.0]}, {"score": 0.2, "segment": [2.0, 3.0]}]


def test_detection_entries_fuse_top2_classes():
    props = np.array([[1.0, 5.0, 0.5], [2.0, 3.0, 0.25]])
    entries = detection_entries(props, np.array([0.1, 0.6, 0.3]), ["a", "b", "c"])
    assert [e["label"] for e in entries] == ["b", "b", "c", "c"]
    assert [e["score"] for e in entries] == pytest.approx([0.3, 0.15, 0.15, 0.075])
    assert entries[2]["segment"] == [1.0, 5.0]
    assert len(detection_entries(props, np.array([0.1, 0.6, 0.3]), ["a", "b", "c"], top_k_classes=1)) == 2
    with pytest.raises(ValueError, match="3 class scores but 2 class names"):
        detection_entries(props, np.array([0.1, 0.6, 0.3]), ["a", "b"])


def test_official_end_rule_never_ends_after_the_last_snippet_start():
    t, dur = 6, 12.0
    cmap = np.random.default_rng(4).uniform(0.1, 1, (2, t, t))
    ones = np.ones(t)
    lofi = proposals_from_output(ones, ones, cmap, dur, "gtad")
    official = proposals_from_output(ones, ones, cmap, dur, "gtad", end_rule="official")
    # the T anchors ending at 1 (s + d + 1 = T) are dropped; nothing ends after (T-1)/T
    assert len(lofi) - len(official) == t and official[:, 1].max() == pytest.approx(dur * (t - 1) / t)
    assert lofi[:, 1].max() == pytest.approx(dur)
    with pytest.raises(OptionError, match="unknown proposal end rule 'last'"):
        proposals_from_output(ones, ones, cmap, dur, "bmn", end_rule="last")
