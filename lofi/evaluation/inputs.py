"""What both evaluators do first: accept loaded dataclasses or parsed JSON dicts, check the
tIoU thresholds, and place every prediction in a video of the evaluated subset."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from lofi.errors import OptionError
from lofi.evaluation.io import GroundTruth, Predictions, parse_ground_truth, parse_predictions

# 0.50, 0.55, ..., 0.95 exactly as the official np.linspace(0.5, 0.95, 10) (0.9 is
# 0.8999999999999999 there, which decides tIoUs landing on it).
DEFAULT_TIOU_THRESHOLDS: tuple[float, ...] = tuple(np.linspace(0.5, 0.95, 10).tolist())


def as_ground_truth(ground_truth: GroundTruth | Mapping, subset: str | None) -> GroundTruth:
    """A GroundTruth from a loaded one (whose subset must match `subset` if given) or from
    the parsed JSON (subset default "validation")."""
    if isinstance(ground_truth, GroundTruth):
        if subset is not None and subset != ground_truth.subset:
            raise OptionError(
                f"subset {subset!r} asked, but the ground truth was loaded for subset "
                f"{ground_truth.subset!r}"
            )
        return ground_truth
    return parse_ground_truth(ground_truth, "validation" if subset is None else subset)


def as_predictions(predictions: Predictions | Mapping) -> Predictions:
    if isinstance(predictions, Predictions):
        return predictions
    return parse_predictions(predictions)


def check_thresholds(thresholds: Sequence[float]) -> np.ndarray:
    """The tIoU thresholds as a float64 array; each must be in (0, 1]."""
    values = [float(t) for t in thresholds]
    if not values:
        raise OptionError("no tIoU threshold given")
    for value in values:
        if not math.isfinite(value) or not 0.0 < value <= 1.0:
            raise OptionError(f"tIoU threshold {value} is not in (0, 1]")
    return np.asarray(values, dtype=np.float64)


def map_to_subset(gt: GroundTruth, pred: Predictions) -> tuple[np.ndarray, int]:
    """Index into gt.video_ids of every prediction's video (-1 outside the subset), and the
    number of predictions outside it."""
    index = {vid: i for i, vid in enumerate(gt.video_ids)}
    table = np.array([index.get(vid, -1) for vid in pred.video_ids] + [-1], dtype=np.int64)
    video = table[pred.video]  # (P,)
    return video, int(np.count_nonzero(video < 0))
