"""Ground truth and prediction files in the official ActivityNet formats, loaded into
flat numpy arrays and validated, with errors that name the file and the entry.

Formats (activitynet/ActivityNet `Evaluation/`, README and `eval_detection.py`):
  ground truth  {"database": {vid: {"subset", "annotations": [{"segment": [s, e], "label"}]}}}
  predictions   {"results": {vid: [{"label", "score", "segment": [s, e]}]}}
Proposals are predictions without "label". Order is kept exactly as in the file: the
official code sorts with numpy's (unstable) argsort, so the order of tied scores, and
with it the numbers, depends on the input order (see `common.py`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lofi.errors import InputFileError
from planner.strict_json import read_json_document

_NUMBER_TYPES = {int, float}


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """The annotated segments of one subset. One row per annotation, in file order."""

    source: str  # the file (or "<ground truth>") named in error messages
    subset: str
    video_ids: tuple[str, ...]  # every video of the subset, annotated or not, file order
    classes: tuple[str, ...]  # labels in order of first appearance in the subset
    video: np.ndarray  # (N,) int64 index into video_ids
    start: np.ndarray  # (N,) float64 seconds
    end: np.ndarray  # (N,) float64 seconds
    label: np.ndarray  # (N,) int64 index into classes

    def __len__(self) -> int:
        return int(self.video.shape[0])


@dataclass(frozen=True, eq=False)
class Predictions:
    """Scored segments of a results file. One row per entry, in file order; the rows of a
    video are contiguous."""

    source: str
    video_ids: tuple[str, ...]  # videos of the file, file order
    labels: tuple[str, ...]  # distinct labels, order of first appearance
    video: np.ndarray  # (P,) int64 index into video_ids, non-decreasing
    start: np.ndarray  # (P,) float64
    end: np.ndarray  # (P,) float64
    score: np.ndarray  # (P,) float64
    label: np.ndarray  # (P,) int64 index into labels, -1 where the entry has no label

    def __len__(self) -> int:
        return int(self.video.shape[0])

    def entry_name(self, row: int) -> str:
        """`results["vid"][i]` for row `row`, for error messages."""
        first = int(np.searchsorted(self.video, self.video[row]))
        vid = self.video_ids[int(self.video[row])]
        return f"results[{json.dumps(vid)}][{row - first}]"


def load_ground_truth(path: str | Path, subset: str = "validation") -> GroundTruth:
    """Read an ActivityNet ground-truth file and keep the videos of `subset`."""
    return parse_ground_truth(read_json_document(path, InputFileError, "ground truth file"), subset, source=str(path))


def load_predictions(path: str | Path) -> Predictions:
    """Read an ActivityNet results file (detections or proposals)."""
    return parse_predictions(read_json_document(path, InputFileError, "predictions file"), source=str(path))


def _segment_problem(segment: object) -> str | None:
    """Why `segment` is not [start, end] with finite numbers and end >= start, or None."""
    if not isinstance(segment, list) or len(segment) != 2:
        return f"segment must be [start, end], got {_short(segment)}"
    for value in segment:
        if type(value) not in _NUMBER_TYPES or not _finite(value):
            return f"segment must be two finite numbers, got {_short(segment)}"
    if float(segment[1]) < float(segment[0]):
        return f"segment ends before it starts: {_short(segment)}"
    return None


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _short(value: object) -> str:
    text = json.dumps(value) if _jsonable(value) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _jsonable(value: object) -> bool:
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return False
    return True


def parse_ground_truth(
    data: object, subset: str = "validation", source: str = "<ground truth>"
) -> GroundTruth:
    """Validate parsed ground-truth JSON and keep the annotations of `subset`."""
    database = _top_level(data, "database", source)
    video_ids: list[str] = []
    classes: dict[str, int] = {}
    video, start, end, label = [], [], [], []
    subsets_seen: set[str] = set()
    for vid, entry in database.items():
        where = f"{source}: database[{json.dumps(vid)}]"
        if not isinstance(entry, Mapping):
            raise InputFileError(f"{where} must be an object, got {_short(entry)}")
        if "subset" not in entry:
            raise InputFileError(f"{where} has no 'subset'")
        subsets_seen.add(str(entry["subset"]))
        if entry["subset"] != subset:
            continue
        annotations = entry.get("annotations")
        if not isinstance(annotations, list):
            raise InputFileError(f"{where}.annotations must be a list, got {_short(annotations)}")
        index = len(video_ids)
        video_ids.append(vid)
        for i, annotation in enumerate(annotations):
            name = f"{where}.annotations[{i}]"
            if not isinstance(annotation, Mapping):
                raise InputFileError(f"{name} must be an object, got {_short(annotation)}")
            problem = _segment_problem(annotation.get("segment"))
            if problem is not None:
                raise InputFileError(f"{name}: {problem}")
            name_of_class = annotation.get("label")
            if not isinstance(name_of_class, str):
                raise InputFileError(f"{name}: label must be a string, got {_short(name_of_class)}")
            video.append(index)
            start.append(float(annotation["segment"][0]))
            end.append(float(annotation["segment"][1]))
            label.append(classes.setdefault(name_of_class, len(classes)))
    if not video_ids:
        present = ", ".join(sorted(subsets_seen)) or "none"
        raise InputFileError(
            f"{source}: no video of subset {subset!r} (subsets in the file: {present})"
        )
    return GroundTruth(
        source=source,
        subset=subset,
        video_ids=tuple(video_ids),
        classes=tuple(classes),
        video=np.asarray(video, dtype=np.int64),
        start=np.asarray(start, dtype=np.float64),
        end=np.asarray(end, dtype=np.float64),
        label=np.asarray(label, dtype=np.int64),
    )


def parse_predictions(data: object, source: str = "<predictions>") -> Predictions:
    """Validate parsed results JSON. Checks run over whole columns; only when one fails is
    the file scanned entry by entry to name the first bad entry."""
    results = _top_level(data, "results", source)
    video_ids: list[str] = []
    counts: list[int] = []
    entries: list[object] = []
    for vid, listed in results.items():
        if not isinstance(listed, list):
            raise InputFileError(
                f"{source}: results[{json.dumps(vid)}] must be a list of predictions, "
                f"got {_short(listed)}"
            )
        video_ids.append(vid)
        counts.append(len(listed))
        entries.extend(listed)
    video = np.repeat(np.arange(len(video_ids), dtype=np.int64), counts)  # (P,)
    columns = _columns(entries)
    if columns is None:
        _raise_first_bad_entry(entries, video, video_ids, source)
    start, end, score, labels_raw = columns
    names: dict[object, int] = {}
    codes = np.fromiter(
        (names.setdefault(name, len(names)) for name in labels_raw), np.int64, len(labels_raw)
    )
    labels = [name for name in names if name is not None]
    if None in names:  # entries without a label (proposals) get -1
        position = {name: i for i, name in enumerate(labels)}
        codes = np.array([position.get(name, -1) for name in names], np.int64)[codes]
    return Predictions(
        source=source,
        video_ids=tuple(video_ids),
        labels=tuple(labels),
        video=video,
        start=start,
        end=end,
        score=score,
        label=codes,
    )


def _columns(entries: list[object]):
    """(start, end, score, labels) as arrays when every entry is valid, else None."""
    if any(type(entry) is not dict for entry in entries):
        return None
    segments = [entry.get("segment") for entry in entries]
    scores = [entry.get("score") for entry in entries]
    labels = [entry.get("label") for entry in entries]
    if any(type(segment) is not list or len(segment) != 2 for segment in segments):
        return None
    starts = [segment[0] for segment in segments]
    ends = [segment[1] for segment in segments]
    for column in (starts, ends, scores):
        if not set(map(type, column)) <= _NUMBER_TYPES:
            return None
    if not set(map(type, labels)) <= {str, type(None)}:
        return None
    try:
        start = np.asarray(starts, dtype=np.float64).reshape(-1)
        end = np.asarray(ends, dtype=np.float64).reshape(-1)
        score = np.asarray(scores, dtype=np.float64).reshape(-1)
    except OverflowError:
        return None
    finite = np.isfinite(start) & np.isfinite(end) & np.isfinite(score)
    if not finite.all() or (end < start).any():
        return None
    return start, end, score, labels


def _raise_first_bad_entry(entries, video, video_ids, source) -> None:
    first_of_video = np.searchsorted(video, np.arange(len(video_ids)))
    for row, entry in enumerate(entries):
        problem = _entry_problem(entry)
        if problem is not None:
            vid = int(video[row])
            name = f"results[{json.dumps(video_ids[vid])}][{row - int(first_of_video[vid])}]"
            raise InputFileError(f"{source}: {name}: {problem}")
    raise AssertionError("a column check failed but no entry is bad")  # pragma: no cover


def _entry_problem(entry: object) -> str | None:
    if not isinstance(entry, dict):
        return f"must be an object, got {_short(entry)}"
    problem = _segment_problem(entry.get("segment"))
    if problem is not None:
        return problem
    score = entry.get("score")
    if "score" not in entry:
        return "has no score"
    if type(score) not in _NUMBER_TYPES:
        return f"score must be a number, got {_short(score)}"
    if not _finite(score):
        return f"score must be a finite number, got {_short(score)}"
    name = entry.get("label")
    if name is not None and not isinstance(name, str):
        return f"label must be a string, got {_short(name)}"
    return None


def _top_level(data: object, key: str, source: str) -> Mapping:
    if not isinstance(data, Mapping):
        raise InputFileError(f"{source}: expected a JSON object with {key!r}, got {_short(data)}")
    if key not in data:
        found = ", ".join(map(repr, list(data)[:5])) or "nothing"
        raise InputFileError(f"{source}: no {key!r} key (found {found})")
    value = data[key]
    if not isinstance(value, Mapping):
        raise InputFileError(f"{source}: {key!r} must be an object keyed by video id")
    return value
