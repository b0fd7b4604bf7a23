"""ActivityNet evaluation, identical in its numbers to the official code
(activitynet/ActivityNet `Evaluation/`): detection mAP at tIoU thresholds and proposal
AR@AN / AUC, vectorised with numpy.

    gt = load_ground_truth("activity_net.v1-3.min.json", subset="validation")
    result = evaluate_detection(gt, load_predictions("results.json"))
    result.average_mAP, result.mAP            # fractions in [0, 1]
    evaluate_proposals(gt, load_predictions("proposals.json")).auc
"""

from lofi.evaluation.detection import DetectionResult, evaluate_detection
from lofi.evaluation.inputs import DEFAULT_TIOU_THRESHOLDS
from lofi.evaluation.io import (
    GroundTruth,
    Predictions,
    load_ground_truth,
    load_predictions,
    parse_ground_truth,
    parse_predictions,
)
from lofi.evaluation.proposal import AR_AT, ProposalResult, evaluate_proposals

__all__ = [
    "AR_AT",
    "DEFAULT_TIOU_THRESHOLDS",
    "DetectionResult",
    "GroundTruth",
    "Predictions",
    "ProposalResult",
    "evaluate_detection",
    "evaluate_proposals",
    "load_ground_truth",
    "load_predictions",
    "parse_ground_truth",
    "parse_predictions",
]
