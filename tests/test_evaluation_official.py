"""lofi.evaluation against numbers computed by the official ActivityNet code
(tests/fixtures/evaluation/README.md says how): hand-made cases and predictions derived
from the shared ActivityNet-1.3 ground truth. Agreement is required to 1e-9."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lofi.evaluation import (
    evaluate_detection,
    evaluate_proposals,
    load_ground_truth,
    parse_predictions,
)
from shared_data import activitynet_gt, derived_predictions, require_activitynet_gt

FIXTURES = Path(__file__).parent / "fixtures" / "evaluation"
CASES = json.loads((FIXTURES / "cases.json").read_text())["cases"]
ACTIVITYNET = json.loads((FIXTURES / "activitynet.json").read_text())["cases"]
TOLERANCE = 1e-9


def skip_unless_ties_ordered_alike(case: dict) -> None:
    """The official code orders tied values with numpy's unstable argsort, whose order
    depends on the CPU's SIMD sort; the fixture records the orders its numbers rest on."""
    for probe in case["tie_probes"]:
        if np.argsort(np.array(probe["values"], dtype=np.float64)).tolist() != probe["argsort"]:
            pytest.skip(
                "numpy orders tied values differently on this CPU than where the fixture was "
                "made, so the official numbers differ here too (ties on any CPU: "
                "test_evaluation_reference.py)"
            )


def assert_detection_matches(result, expected: dict) -> None:
    np.testing.assert_allclose(result.mAP, expected["mAP"], rtol=0, atol=TOLERANCE)
    assert result.average_mAP == pytest.approx(expected["average_mAP"], abs=TOLERANCE)
    if "ap" in expected:
        assert set(result.classes) == set(expected["ap"])
        for c, name in enumerate(result.classes):
            np.testing.assert_allclose(result.ap[:, c], expected["ap"][name], rtol=0, atol=TOLERANCE)


def assert_proposals_match(result, expected: dict) -> None:
    np.testing.assert_allclose(result.recall, expected["recall"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(result.avg_recall, expected["avg_recall"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(
        result.proposals_per_video, expected["proposals_per_video"], rtol=0, atol=TOLERANCE
    )
    assert result.auc == pytest.approx(expected["auc"], abs=TOLERANCE)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_hand_made_case_matches_official(case):
    skip_unless_ties_ordered_alike(case)
    if case["task"] == "detection":
        result = evaluate_detection(
            case["gt"], case["pred"], subset=case["subset"], tiou_thresholds=case["thresholds"]
        )
        assert_detection_matches(result, case["expected"])
    else:
        result = evaluate_proposals(
            case["gt"], case["pred"], subset=case["subset"], tiou_thresholds=case["thresholds"],
            max_proposals=case["max_proposals"],
        )
        assert_proposals_match(result, case["expected"])


def test_hand_made_cases_are_not_trivial():
    """The fixtures exercise what they claim: partial scores, not all zeros or ones."""
    by_name = {c["name"]: c["expected"] for c in CASES}
    assert 0 < by_name["one_video_three_gt"]["average_mAP"] < 1
    assert by_name["empty_classes"]["ap"]["B"] == [0.0] * 10
    boundaries = by_name["threshold_boundaries"]["mAP"]
    assert boundaries[0] > boundaries[-1] > 0  # the NaN hit still counts at 0.95
    assert 0 < by_name["proposals_truncation"]["auc"] < 1


@pytest.fixture(scope="module")
def shared_ground_truth():
    return load_ground_truth(require_activitynet_gt(), "validation")


@pytest.mark.parametrize(
    "case", ACTIVITYNET, ids=[f"{c['recipe']}-{c['task']}-{c['max_proposals']}" for c in ACTIVITYNET]
)
def test_derived_from_activitynet_matches_official(case, shared_ground_truth):
    predictions = parse_predictions(derived_predictions(activitynet_gt(), case["recipe"]))
    if case["task"] == "detection":
        result = evaluate_detection(shared_ground_truth, predictions)
        assert_detection_matches(result, case["expected"])
    else:
        result = evaluate_proposals(shared_ground_truth, predictions, max_proposals=case["max_proposals"])
        assert_proposals_match(result, case["expected"])


def test_perfect_detections_score_one(shared_ground_truth):
    predictions = parse_predictions(derived_predictions(activitynet_gt(), "perfect"))
    result = evaluate_detection(shared_ground_truth, predictions)
    assert result.average_mAP == 1.0
    assert result.mAP.tolist() == [1.0] * 10
    assert (result.videos, result.ground_truth, len(result.classes)) == (4728, 7293, 200)


def test_perfect_proposals_miss_only_zero_length_segments(shared_ground_truth):
    """The official tIoU of two zero-length segments is NaN, never >= a threshold: the 3
    zero-length validation segments cannot be recalled, even by themselves."""
    predictions = parse_predictions(derived_predictions(activitynet_gt(), "perfect"))
    result = evaluate_proposals(shared_ground_truth, predictions)
    zero_length = int(np.count_nonzero(shared_ground_truth.end == shared_ground_truth.start))
    assert zero_length == 3
    assert result.ar_at[100] == pytest.approx((7293 - zero_length) / 7293, abs=1e-12)
