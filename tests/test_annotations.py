"""lofi.data.annotations: the real ActivityNet-1.3 file and every bad-input case."""

from __future__ import annotations

import json

import pytest

from lofi.data.annotations import check_video_id, load_annotations
from lofi.errors import InputFileError, OptionError
from shared_data import ACTIVITYNET_GT, require


def _write(tmp_path, database, name="gt.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"version": "test", "database": database}))
    return path


def _video(subset="training", duration=10.0, segments=((1.0, 2.0, "Jump"),), **extra):
    entry = {"subset": subset, "duration": duration,
             "annotations": [{"segment": [s, e], "label": label} for s, e, label in segments]}
    entry.update(extra)
    return entry


def test_real_activitynet_file_loads_with_its_known_counts():
    annotations = load_annotations(require(ACTIVITYNET_GT))
    by_subset = {}
    for record in annotations.records:
        by_subset[record.subset] = by_subset.get(record.subset, 0) + 1
    assert by_subset == {"training": 9649, "validation": 4728, "testing": 4851}
    assert len(annotations.classes) == 200
    assert list(annotations.classes) == sorted(annotations.classes)
    # shared/data/README.md: 14,859 training and 7,293 validation instances; the loader
    # clips 215 segments that reach past the video and drops 12 empty ones.
    assert annotations.clipped == 215 and annotations.dropped == 12
    instances = sum(len(record.segments) for record in annotations.records)
    assert instances == 14859 + 7293 - 12
    assert all(not r.segments for r in annotations.records if r.subset == "testing")
    for record in annotations.records:
        for segment in record.segments:
            assert 0.0 <= segment.start < segment.end <= record.duration


def test_real_file_subset_filter_and_given_class_order():
    path = require(ACTIVITYNET_GT)
    validation = load_annotations(path, subsets=["validation"])
    assert len(validation.records) == 4728
    assert {record.subset for record in validation.records} == {"validation"}
    reversed_classes = tuple(reversed(validation.classes))
    again = load_annotations(path, subsets=["val"], classes=reversed_classes)
    assert again.classes == reversed_classes


def test_records_are_sorted_typed_and_keep_fps(tmp_path):
    path = _write(tmp_path, {
        "b": _video(duration="12.5", fps=25),
        "a": _video("validation", segments=((3, 4, "Run"), (1, 2, "Jump"))),
    })
    annotations = load_annotations(path)
    assert [r.video_id for r in annotations.records] == ["a", "b"]
    b = annotations.by_id()["b"]
    assert b.duration == 12.5 and b.fps == 25.0
    assert annotations.by_id()["a"].fps is None
    assert annotations.classes == ("Jump", "Run")
    assert annotations.class_index() == {"Jump": 0, "Run": 1}
    assert annotations.path == path


def test_not_json_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"database": {\n  "a": }')
    with pytest.raises(InputFileError, match=r"broken\.json: not valid JSON \(line 2"):
        load_annotations(path)


def test_missing_file_and_missing_database(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        load_annotations(tmp_path / "absent.json")
    path = tmp_path / "plain.json"
    path.write_text(json.dumps({"results": {}}))
    with pytest.raises(InputFileError, match=r"plain\.json: missing the top-level 'database'"):
        load_annotations(path)


@pytest.mark.parametrize("duration, message", [
    ("long", r"video 'v1': field 'duration' is 'long', not a number"),
    (-3.0, r"video 'v1': field 'duration' is negative"),
    (0, r"video 'v1': field 'duration' is 0"),
    (None, r"video 'v1': missing field 'duration'"),
    (True, r"video 'v1': field 'duration' is True, not a number"),
    (float("nan"), r"video 'v1': field 'duration' is nan, not a finite number"),
])
def test_bad_duration_names_file_video_and_field(tmp_path, duration, message):
    path = _write(tmp_path, {"v1": _video(duration=duration)})
    with pytest.raises(InputFileError, match=r"gt\.json: " + message):
        load_annotations(path)


def test_segments_outside_the_video_are_clipped_and_counted(tmp_path):
    path = _write(tmp_path, {"v1": _video(duration=10.0, segments=(
        (-1.0, 2.0, "A"), (8.0, 12.0, "A"), (3.0, 4.0, "A")))})
    annotations = load_annotations(path)
    segments = annotations.records[0].segments
    assert [(s.start, s.end) for s in segments] == [(0.0, 2.0), (8.0, 10.0), (3.0, 4.0)]
    assert annotations.clipped == 2 and annotations.dropped == 0


def test_empty_segments_are_dropped_and_counted(tmp_path):
    path = _write(tmp_path, {"v1": _video(duration=10.0, segments=(
        (5.0, 5.0, "A"), (6.0, 4.0, "A"), (11.0, 12.0, "A"), (1.0, 2.0, "A")))})
    annotations = load_annotations(path)
    assert [(s.start, s.end) for s in annotations.records[0].segments] == [(1.0, 2.0)]
    assert annotations.dropped == 3 and annotations.clipped == 0


def test_unknown_subset_is_an_error_and_aliases_are_accepted(tmp_path):
    path = _write(tmp_path, {"v1": _video(subset="holdout")})
    with pytest.raises(InputFileError, match=r"video 'v1': field 'subset' is 'holdout'"):
        load_annotations(path)
    thumos = _write(tmp_path, {"a": _video(subset="Validation"), "b": _video(subset="Test")}, "t.json")
    assert [r.subset for r in load_annotations(thumos).records] == ["validation", "testing"]
    with pytest.raises(OptionError, match="unknown subset 'dev'"):
        load_annotations(thumos, subsets=["dev"])


@pytest.mark.parametrize("video_id", ["../escape", "a/b", "a\\b", "..", ".hidden", "", "x\0y"])
def test_unsafe_video_ids_are_rejected(tmp_path, video_id):
    path = _write(tmp_path, {video_id: _video()})
    with pytest.raises(InputFileError, match="video id"):
        load_annotations(path)
    with pytest.raises(InputFileError):
        check_video_id(video_id)


def test_safe_ids_pass():
    for video_id in ["---9CpRcKoU", "v_abc", "video_test_0000004", "a.b"]:
        assert check_video_id(video_id) == video_id


@pytest.mark.parametrize("item, message", [
    ({"segment": [1, 2]}, "field 'label' is None"),
    ({"segment": [1], "label": "A"}, r"field 'segment' is \[1\]; expected \[start, end\]"),
    ({"segment": ["a", 2], "label": "A"}, r"field 'segment' is \[.a., 2\], not two numbers"),
    ("oops", "expected an object"),
])
def test_bad_annotation_items_name_the_index(tmp_path, item, message):
    path = _write(tmp_path, {"v1": {"subset": "training", "duration": 5, "annotations": [
        {"segment": [0, 1], "label": "A"}, item]}})
    with pytest.raises(InputFileError, match=r"video 'v1': annotations\[1\]: " + message):
        load_annotations(path)


def test_testing_videos_without_annotations_load(tmp_path):
    path = _write(tmp_path, {"t1": {"subset": "testing", "duration": 30.0},
                             "t2": {"subset": "testing", "duration": 31.0, "annotations": []}})
    annotations = load_annotations(path)
    assert [r.segments for r in annotations.records] == [(), ()]
    assert annotations.classes == ()


def test_given_class_list_rejects_unknown_labels_and_duplicates(tmp_path):
    path = _write(tmp_path, {"v1": _video(segments=((1, 2, "Jump"), (3, 4, "Swim")))})
    with pytest.raises(InputFileError, match=r"1 label\(s\) not in the given class list.*Swim"):
        load_annotations(path, classes=["Jump", "Run"])
    with pytest.raises(OptionError, match="duplicate"):
        load_annotations(path, classes=["Jump", "Jump", "Swim"])
    given = load_annotations(path, classes=["Swim", "Run", "Jump"])
    assert given.classes == ("Swim", "Run", "Jump")
