"""Loading and checking ground truth and predictions: clear errors naming the file and the
entry; what is ignored is counted; empty inputs give zeros."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lofi.errors import InputFileError, OptionError
from lofi.evaluation import (
    evaluate_detection,
    evaluate_proposals,
    load_ground_truth,
    load_predictions,
)

GT = {
    "version": "VERSION 1.3",
    "taxonomy": [],
    "database": {
        "a": {"subset": "validation", "annotations": [
            {"segment": [0, 10], "label": "Run"}, {"segment": [20, 30], "label": "Jump"}]},
        "b": {"subset": "validation", "annotations": [{"segment": [5.5, 9], "label": "Run"}]},
        "t": {"subset": "training", "annotations": [{"segment": [1, 2], "label": "Swim"}]},
    },
}
PRED = {
    "results": {
        "a": [{"label": "Run", "score": 0.9, "segment": [0, 9]},
              {"label": "Jump", "score": 0.4, "segment": [21, 30]}],
        "b": [{"label": "Run", "score": 0.7, "segment": [5, 9]},
              {"label": "Jump", "score": 0.2, "segment": [0, 3]}],
    }
}


def write(tmp_path, name: str, obj) -> str:
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def with_entry(entry: dict) -> dict:
    pred = json.loads(json.dumps(PRED))
    pred["results"]["b"].append(entry)
    return pred


def test_loaded_files_evaluate_like_dicts(tmp_path):
    gt = load_ground_truth(write(tmp_path, "gt.json", GT))
    pred = load_predictions(write(tmp_path, "pred.json", PRED))
    assert (gt.video_ids, gt.classes, len(gt)) == (("a", "b"), ("Run", "Jump"), 3)
    assert pred.entry_name(3) == 'results["b"][1]'
    from_files = evaluate_detection(gt, pred)
    from_dicts = evaluate_detection(GT, PRED)
    assert from_files.average_mAP == from_dicts.average_mAP
    assert 0 < from_files.average_mAP < 1


def test_not_json_names_the_file_and_position(tmp_path):
    path = write(tmp_path, "pred.json", '{"results": {"a": [}')
    with pytest.raises(InputFileError, match=r"pred\.json: not valid JSON \(line 1, column \d+: "):
        load_predictions(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputFileError, match=r"ground truth file not found: .*nope\.json"):
        load_ground_truth(tmp_path / "nope.json")
    with pytest.raises(InputFileError, match="is a directory"):
        load_predictions(tmp_path)


def test_missing_top_level_keys(tmp_path):
    with pytest.raises(InputFileError, match=r"gt\.json: no 'database' key \(found 'results'\)"):
        load_ground_truth(write(tmp_path, "gt.json", PRED))
    with pytest.raises(InputFileError, match=r"pred\.json: no 'results' key"):
        load_predictions(write(tmp_path, "pred.json", GT))
    with pytest.raises(InputFileError, match="expected a JSON object"):
        load_predictions(write(tmp_path, "list.json", [1, 2]))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"label": "Run", "score": 0.5, "segment": [1]}, r"segment must be \[start, end\], got \[1\]"),
        ({"label": "Run", "score": 0.5, "segment": [1, "2"]}, r"two finite numbers, got \[1, \"2\"\]"),
        ({"label": "Run", "score": 0.5, "segment": [1, float("nan")]}, "two finite numbers"),
        ({"label": "Run", "score": 0.5, "segment": [True, 2]}, "two finite numbers"),
        ({"label": "Run", "score": 0.5, "segment": [5, 3]}, r"ends before it starts: \[5, 3\]"),
        ({"label": "Run", "score": "0.5", "segment": [1, 2]}, r"score must be a number, got \"0\.5\""),
        ({"label": "Run", "score": None, "segment": [1, 2]}, "score must be a number, got null"),
        ({"label": "Run", "segment": [1, 2]}, "has no score"),
        ({"label": "Run", "score": float("inf"), "segment": [1, 2]}, "score must be a finite number"),
        ({"label": 7, "score": 0.5, "segment": [1, 2]}, "label must be a string, got 7"),
    ],
)
def test_bad_prediction_entry_is_named(tmp_path, entry, message):
    path = write(tmp_path, "pred.json", with_entry(entry))
    with pytest.raises(InputFileError, match=r"pred\.json: results\[\"b\"\]\[2\]: .*" + message):
        load_predictions(path)


def test_bad_ground_truth_entries_are_named(tmp_path):
    gt = json.loads(json.dumps(GT))
    gt["database"]["b"]["annotations"][0]["segment"] = [9, 5.5]
    with pytest.raises(InputFileError, match=r'gt\.json: database\["b"\]\.annotations\[0\]: segment ends'):
        load_ground_truth(write(tmp_path, "gt.json", gt))
    gt["database"]["b"] = {"annotations": []}
    with pytest.raises(InputFileError, match=r"database\[\"b\"\] has no 'subset'"):
        load_ground_truth(write(tmp_path, "gt.json", gt))


def test_unknown_subset_lists_the_subsets(tmp_path):
    with pytest.raises(InputFileError, match=r"no video of subset 'testing' \(subsets in the file: training, validation\)"):
        load_ground_truth(write(tmp_path, "gt.json", GT), subset="testing")


def test_unknown_label_is_an_error_unless_ignored():
    pred = with_entry({"label": "Dance", "score": 0.95, "segment": [5, 9]})
    with pytest.raises(InputFileError, match=r"results\[\"b\"\]\[2\] has label 'Dance', which is not a class"):
        evaluate_detection(GT, pred)
    ignored = evaluate_detection(GT, pred, ignore_unknown_labels=True)
    assert ignored.ignored_unknown_labels == 1
    assert ignored.predictions == 4
    assert ignored.average_mAP == evaluate_detection(GT, PRED).average_mAP


def test_label_of_another_subset_is_unknown():
    pred = with_entry({"label": "Swim", "score": 0.1, "segment": [5, 9]})
    with pytest.raises(InputFileError, match="'Swim', which is not a class of the ground truth subset 'validation'"):
        evaluate_detection(GT, pred)


def test_predictions_outside_the_subset_are_ignored_and_counted():
    pred = json.loads(json.dumps(PRED))
    pred["results"]["t"] = [{"label": "Run", "score": 0.99, "segment": [1, 2]}]
    pred["results"]["zzz"] = [{"label": "Nonsense", "score": 0.99, "segment": [1, 2]}] * 3
    result = evaluate_detection(GT, pred)
    assert result.ignored_outside_subset == 4
    assert result.predictions == 4
    np.testing.assert_array_equal(result.ap, evaluate_detection(GT, PRED).ap)
    proposals = evaluate_proposals(GT, pred)
    assert proposals.ignored_outside_subset == 4 and proposals.proposals == 4
    np.testing.assert_array_equal(proposals.recall, evaluate_proposals(GT, PRED).recall)


@pytest.mark.parametrize("results", [{}, {"a": [], "b": []}])
def test_empty_predictions_give_zeros(results):
    detection = evaluate_detection(GT, {"results": results})
    assert detection.average_mAP == 0.0 and not detection.mAP.any()
    assert detection.predictions == 0
    proposals = evaluate_proposals(GT, {"results": results})
    assert proposals.auc == 0.0 and not proposals.avg_recall.any()
    assert proposals.ar_at[100] == 0.0
    assert proposals.proposals_per_video[-1] == 100.0


def test_detection_needs_labels():
    proposals = {"results": {"a": [{"score": 0.5, "segment": [0, 10]}]}}
    with pytest.raises(InputFileError, match=r"results\[\"a\"\]\[0\] has no label; .*--proposals"):
        evaluate_detection(GT, proposals)
    assert evaluate_proposals(GT, proposals).avg_recall[-1] == pytest.approx(1 / 3)


def test_options_are_checked(tmp_path):
    gt = load_ground_truth(write(tmp_path, "gt.json", GT))
    with pytest.raises(OptionError, match="subset 'training' asked, but the ground truth was loaded for subset 'validation'"):
        evaluate_detection(gt, PRED, subset="training")
    with pytest.raises(OptionError, match=r"tIoU threshold 1.5 is not in \(0, 1\]"):
        evaluate_detection(gt, PRED, tiou_thresholds=[0.5, 1.5])
    with pytest.raises(OptionError, match="must be > 0"):
        evaluate_proposals(gt, PRED, max_proposals=0)


def test_subset_without_annotations_cannot_be_evaluated():
    gt = {"database": {"x": {"subset": "testing", "annotations": []}}}
    with pytest.raises(InputFileError, match="subset 'testing' has no annotated segment"):
        evaluate_detection(gt, PRED, subset="testing")


def test_ar_at_k_only_on_the_an_grid():
    half = evaluate_proposals(GT, PRED, max_proposals=50)
    assert half.ar_at[100] is None and half.ar_at[1] == pytest.approx(half.avg_recall[1])
    assert half.to_json()["AR@100"] is None
