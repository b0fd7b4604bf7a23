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
MAX_THRESHOLDS = 1000  # a 'start:step:stop' range longer than this is a typo, not a request


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


def parse_thresholds(text: str) -> list[float]:
    """'0.3,0.5,0.7' or 'start:step:stop' (inclusive, as np.linspace(start, stop, n))."""
    try:
        if ":" in text:
            start, step, stop = (float(part) for part in text.split(":"))
            if not (np.isfinite([start, step, stop]).all() and step > 0):
                raise ValueError  # checked before dividing by the step
            count = round((stop - start) / step) + 1
            if not 1 <= count <= MAX_THRESHOLDS or abs(start + (count - 1) * step - stop) > 1e-9:
                raise ValueError
            return np.linspace(start, stop, count).tolist()
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise OptionError(
            f"--tiou-thresholds {text!r}: expected 'a,b,c' or 'start:step:stop' with a step > 0 "
            f"and stop reached by at most {MAX_THRESHOLDS} whole steps"
        ) from None
