"""Annotations in the ActivityNet format -> plain, validated records.

The schema (ActivityNet-1.3, HACS-1.1, and THUMOS14 converted to it):

    {"database": {"<video id>": {"subset": "training" | "validation" | "testing",
                                 "duration": seconds, "fps": optional,
                                 "annotations": [{"segment": [start, end], "label": str}]}}}

Validation is strict where the data cannot be used (the error names the file, the video
id and the field) and lenient where the official files are themselves imperfect: a
segment that reaches outside [0, duration] is clipped and counted (the ActivityNet-1.3
release has 215 such segments), a segment with end <= start after clipping is dropped and
counted (it has 12).
"""

from __future__ import annotations

import math
import os
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lofi.errors import InputFileError, OptionError
from planner.strict_json import read_json_document

SUBSETS: tuple[str, ...] = ("training", "validation", "testing")
# Spellings seen in converted files (e.g. THUMOS14 as "Validation"/"Test").
_SUBSET_ALIASES: dict[str, str] = {
    "training": "training", "train": "training",
    "validation": "validation", "val": "validation",
    "testing": "testing", "test": "testing",
}


@dataclass(frozen=True)
class Segment:
    start: float  # seconds
    end: float  # seconds, > start
    label: str


@dataclass(frozen=True)
class VideoRecord:
    video_id: str
    subset: str  # one of SUBSETS
    duration: float  # seconds, > 0
    fps: float | None
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class AnnotationSet:
    records: tuple[VideoRecord, ...]
    classes: tuple[str, ...]  # sorted labels, or the class list given to the loader
    clipped: int  # segments clipped to [0, duration]
    dropped: int  # segments dropped because end <= start (after clipping)
    path: Path

    def class_index(self) -> dict[str, int]:
        """label -> index into `classes`."""
        return {name: index for index, name in enumerate(self.classes)}

    def by_id(self) -> dict[str, VideoRecord]:
        return {record.video_id: record for record in self.records}


def check_video_id(video_id: object, where: str = "") -> str:
    """Return `video_id` if it is safe as a file name part, else raise InputFileError.

    Rejected: non-strings, empty ids, path separators, `..`, NUL and ids that start
    with `.` (hidden files), because ids become paths under the media folder; control
    characters (newline, tab, ...), because ids become rows of listings
    (data_check.tsv, media_problems.txt) where they would forge extra rows."""
    prefix = f"{where}: " if where else ""
    if not isinstance(video_id, str) or not video_id:
        raise InputFileError(f"{prefix}video id {video_id!r} must be a non-empty string")
    bad = [sep for sep in ("/", "\\", os.sep, "\0") if sep in video_id]
    if bad or ".." in video_id or video_id.startswith("."):
        raise InputFileError(
            f"{prefix}video id {video_id!r} contains a path separator, '..' or a leading '.'; "
            "ids must be plain file names")
    control = next((c for c in video_id if unicodedata.category(c) == "Cc"), None)
    if control is not None:
        raise InputFileError(f"{prefix}video id {video_id!r} contains the control character {control!r}; "
                             "ids must be plain file names")
    return video_id


def load_annotations(
    path: str | os.PathLike,
    *,
    subsets: Iterable[str] | None = None,
    classes: Sequence[str] | None = None,
) -> AnnotationSet:
    """Read an ActivityNet-format JSON file.

    subsets: keep only these subsets (names as in SUBSETS or their aliases); None keeps all.
    classes: the class list to index labels with (kept in the given order); a label
      outside it is an error. None: the sorted set of labels in the kept records.
    Records are returned sorted by video id. Raises InputFileError naming the file,
    video id and field for anything that cannot be used.
    """
    path = Path(path)
    wanted = None if subsets is None else {_subset_option(name) for name in subsets}
    database = _read_database(path)

    records: list[VideoRecord] = []
    clipped = dropped = 0
    for video_id in sorted(database):
        where = f"{path}: video {video_id!r}"
        check_video_id(video_id, str(path))
        entry = database[video_id]
        if not isinstance(entry, dict):
            raise InputFileError(f"{where}: expected an object, got {type(entry).__name__}")
        subset = _subset_field(entry, where)
        if wanted is not None and subset not in wanted:
            continue
        duration = _number(entry, "duration", where, required=True, positive=True)
        fps = _number(entry, "fps", where, required=False, positive=True)
        segments, n_clipped, n_dropped = _segments(entry, duration, where)
        clipped += n_clipped
        dropped += n_dropped
        records.append(VideoRecord(video_id, subset, duration, fps, segments))

    labels = sorted({segment.label for record in records for segment in record.segments})
    if classes is None:
        class_names = tuple(labels)
    else:
        class_names = tuple(classes)
        if len(set(class_names)) != len(class_names):
            raise OptionError("the class list has duplicate names")
        unknown = sorted(set(labels) - set(class_names))
        if unknown:
            raise InputFileError(
                f"{path}: {len(unknown)} label(s) not in the given class list, e.g. {unknown[:3]}")
    return AnnotationSet(tuple(records), class_names, clipped, dropped, path)


def _read_database(path: Path) -> dict:
    document = read_json_document(path, InputFileError, "annotation file")
    if not isinstance(document, dict) or "database" not in document:
        raise InputFileError(
            f"{path}: missing the top-level 'database' object of the ActivityNet format")
    database = document["database"]
    if not isinstance(database, dict):
        raise InputFileError(f"{path}: 'database' must be an object mapping video ids to entries")
    return database


def _subset_option(name: str) -> str:
    subset = _SUBSET_ALIASES.get(str(name).strip().lower())
    if subset is None:
        raise OptionError(f"unknown subset {name!r}; choose from {', '.join(SUBSETS)}")
    return subset


def _subset_field(entry: dict, where: str) -> str:
    if "subset" not in entry:
        raise InputFileError(f"{where}: missing field 'subset'")
    value = entry["subset"]
    subset = _SUBSET_ALIASES.get(value.strip().lower()) if isinstance(value, str) else None
    if subset is None:
        raise InputFileError(
            f"{where}: field 'subset' is {value!r}; expected one of {', '.join(SUBSETS)}")
    return subset


def _number(entry: dict, field: str, where: str, *, required: bool, positive: bool) -> float | None:
    if field not in entry or entry[field] is None:
        if required:
            raise InputFileError(f"{where}: missing field {field!r}")
        return None
    value = entry[field]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputFileError(f"{where}: field {field!r} is {value!r}, not a number")
    try:
        number = float(value)
    except ValueError:
        raise InputFileError(f"{where}: field {field!r} is {value!r}, not a number") from None
    if not math.isfinite(number):
        raise InputFileError(f"{where}: field {field!r} is {value!r}, not a finite number")
    if number < 0:
        raise InputFileError(f"{where}: field {field!r} is negative ({number})")
    if positive and number == 0:
        raise InputFileError(f"{where}: field {field!r} is 0; it must be positive")
    return number


def _segments(entry: dict, duration: float, where: str) -> tuple[tuple[Segment, ...], int, int]:
    """Parse `annotations`, clipping to [0, duration] and dropping empty segments."""
    items = entry.get("annotations", [])
    if items is None:
        items = []
    if not isinstance(items, list):
        raise InputFileError(f"{where}: field 'annotations' must be a list")
    segments: list[Segment] = []
    clipped = dropped = 0
    for number, item in enumerate(items):
        field = f"{where}: annotations[{number}]"
        if not isinstance(item, dict):
            raise InputFileError(f"{field}: expected an object with 'segment' and 'label'")
        label = item.get("label")
        if not isinstance(label, str) or not label:
            raise InputFileError(f"{field}: field 'label' is {label!r}; expected a non-empty string")
        pair = item.get("segment")
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise InputFileError(f"{field}: field 'segment' is {pair!r}; expected [start, end]")
        if any(isinstance(value, bool) or not isinstance(value, (int, float)) for value in pair):
            raise InputFileError(f"{field}: field 'segment' is {pair!r}, not two numbers")
        start, end = float(pair[0]), float(pair[1])
        if not (math.isfinite(start) and math.isfinite(end)):
            raise InputFileError(f"{field}: field 'segment' is {pair!r}, not two finite numbers")
        inside_start, inside_end = min(max(start, 0.0), duration), min(max(end, 0.0), duration)
        if inside_end <= inside_start:  # empty as given, or entirely outside the video
            dropped += 1
            continue
        if (inside_start, inside_end) != (start, end):
            clipped += 1
        segments.append(Segment(inside_start, inside_end, label))
    return tuple(segments), clipped, dropped
