"""Training targets against hand-computed values (anchor convention of lofi.models.labels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lofi.models.labels import Targets, make_targets, targets_to_tensors, valid_anchor_mask


def test_valid_anchor_mask():
    m = valid_anchor_mask(4)
    # row d (duration index) has T - d valid starts
    np.testing.assert_array_equal(m.sum(axis=1), [4, 3, 2, 1])
    assert m[0, 3] and not m[1, 3] and m[3, 0] and not m[3, 1]
    assert valid_anchor_mask(100).sum() == 100 * 101 // 2


def test_one_segment_by_hand():
    # T = 4, video 10 s, action [2, 6] s -> [0.2, 0.6]; anchor (d, s) = [s/4, (s+d+1)/4]
    tg = make_targets(np.array([[2.0, 6.0]]), 10.0, 4)
    expected_iou = np.array([
        # s=0      s=1      s=2      s=3
        [1 / 12, 0.625, 0.1 / 0.55, 0.0],  # d=0: [0,.25] inter .05 union .6; [.25,.5] .25/.4; [.5,.75] .1/.55
        [0.5, 0.35 / 0.55, 0.125, 0.0],  # d=1: [0,.5] .3/.6; [.25,.75] .35/.55; [.5,1] .1/.8; invalid
        [0.4 / 0.75, 0.35 / 0.8, 0.0, 0.0],  # d=2: [0,.75] .4/.75; [.25,1] .35/.8; invalid x2
        [0.4, 0.0, 0.0, 0.0],  # d=3: [0,1] .4/1
    ])
    np.testing.assert_allclose(tg.iou_map, expected_iou, atol=1e-6)
    # start region 0.2 +- 1.5/4 = [-0.175, 0.575]; start anchors [(i-.5)/4, (i+.5)/4]
    #   i=0 [-.125,.125] inside -> 1; i=1 [.125,.375] -> 1; i=2 [.375,.625] -> .2/.25; i=3 -> 0
    np.testing.assert_allclose(tg.start, [1.0, 1.0, 0.8, 0.0], atol=1e-6)
    # end region 0.6 +- 0.375 = [0.225, 0.975]; end anchors [(j+.5)/4, (j+1.5)/4]
    #   j=0 [.125,.375] -> .15/.25; j=1, j=2 inside -> 1; j=3 [.875,1.125] -> .1/.25
    np.testing.assert_allclose(tg.end, [0.6, 1.0, 1.0, 0.4], atol=1e-6)
    assert all(a.dtype == np.float32 for a in tg)


def test_two_segments_take_the_maximum():
    # second action [8, 10] s -> [0.8, 1.0]
    one = make_targets(np.array([[2.0, 6.0]]), 10.0, 4)
    two = make_targets(np.array([[2.0, 6.0], [8.0, 10.0]]), 10.0, 4)
    # anchor (0, 3) = [.75, 1]: inter .2, union .25 -> 0.8 (was 0 with one action)
    assert two.iou_map[0, 3] == pytest.approx(0.8)
    # anchor (1, 2) = [.5, 1]: max(.125, .2/.5) = 0.4
    assert two.iou_map[1, 2] == pytest.approx(0.4)
    # start region of 0.8: [.425, 1.175] covers start anchor 3 [.625, .875] -> 1
    assert two.start[3] == pytest.approx(1.0) and two.start[2] == pytest.approx(0.8)
    # end region of 1.0: [.625, 1.375] covers end anchors 2 and 3 fully
    np.testing.assert_allclose(two.end, [0.6, 1.0, 1.0, 1.0], atol=1e-6)
    assert np.all(two.iou_map >= one.iou_map)


def test_segments_are_clipped_and_invalid_anchors_zero():
    tg = make_targets(np.array([[-5.0, 250.0]]), 100.0, 8)  # clipped to the whole video
    assert tg.iou_map[7, 0] == pytest.approx(1.0)
    assert np.all(tg.iou_map[~valid_anchor_mask(8)] == 0)
    assert tg.start[0] == pytest.approx(1.0) and tg.end[7] == pytest.approx(1.0)


def test_no_segments_gives_zeros():
    for segs in (np.zeros((0, 2)), []):
        tg = make_targets(segs, 30.0, 5)
        assert tg.start.shape == (5,) and tg.iou_map.shape == (5, 5)
        assert not tg.start.any() and not tg.end.any() and not tg.iou_map.any()


@pytest.mark.parametrize("bad, match", [((np.ones((2, 3)), 10.0), "shape"), ((np.ones((1, 2)), 0.0), "duration")])
def test_rejects_malformed_input(bad, match):
    with pytest.raises(ValueError, match=match):
        make_targets(*bad, 4)


def test_targets_to_tensors():
    tgs = [make_targets(np.array([[1.0, 4.0]]), 10.0, 6), make_targets([], 10.0, 6)]
    start, end, iou = targets_to_tensors(tgs, "cpu")
    assert start.shape == (2, 6) and end.shape == (2, 6) and iou.shape == (2, 6, 6)
    assert start.dtype == torch.float32
    torch.testing.assert_close(iou[0], torch.from_numpy(tgs[0].iou_map))
    assert isinstance(tgs[0], Targets)


def test_gtad_boundary_regions_span_two_snippets():
    # G-TAD gtad_lib/dataset.py: boundary index k covers [(k - 0.5)/T, (k + 1.5)/T];
    # lofi's end[j] is boundary index j + 1. T = 4, action [2, 6] s of 10 s as above.
    tg = make_targets(np.array([[2.0, 6.0]]), 10.0, 4, head="gtad")
    # start GT region [-0.175, 0.575]; start anchors [(i-.5)/4, (i+1.5)/4], length .5
    #   i=0 [-.125,.375] -> 1; i=1 [.125,.625] -> .45/.5; i=2 [.375,.875] -> .2/.5; i=3 [.625,1.125] -> 0
    np.testing.assert_allclose(tg.start, [1.0, 0.9, 0.4, 0.0], atol=1e-6)
    # end GT region [0.225, 0.975]; end anchors [(j+.5)/4, (j+2.5)/4]
    #   j=0 [.125,.625] -> .4/.5; j=1 [.375,.875] -> 1; j=2 [.625,1.125] -> .35/.5; j=3 [.875,1.375] -> .1/.5
    np.testing.assert_allclose(tg.end, [0.8, 1.0, 0.7, 0.2], atol=1e-6)
    bmn = make_targets(np.array([[2.0, 6.0]]), 10.0, 4, head="bmn")
    np.testing.assert_array_equal(bmn.iou_map, tg.iou_map)  # only the boundary regions differ
    with pytest.raises(ValueError, match="unknown head 'tad'"):
        make_targets(np.array([[2.0, 6.0]]), 10.0, 4, head="tad")
