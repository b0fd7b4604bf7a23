"""`lofi eval` end to end on the shared ActivityNet-1.3 ground truth, and its errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lofi.cli import main
from lofi.errors import OptionError
from lofi.evaluation import evaluate_proposals
from lofi.evaluation.plot import plot_ar_an
from shared_data import activitynet_gt, derived_predictions, require_activitynet_gt

FIXTURE = Path(__file__).parent / "fixtures" / "evaluation" / "activitynet.json"
ACTIVITYNET = json.loads(FIXTURE.read_text())["cases"]  # official numbers, see README there
DETECTION_KEYS = {"task", "subset", "tiou_thresholds", "mAP", "average_mAP", "videos",
                  "ground_truth", "predictions"}
PROPOSAL_KEYS = {"task", "subset", "AR@1", "AR@5", "AR@10", "AR@100", "AUC", "avg_recall",
                 "proposals_per_video"}


def expected(recipe: str, task: str, max_proposals: int = 100) -> dict:
    return next(c["expected"] for c in ACTIVITYNET
                if (c["recipe"], c["task"], c["max_proposals"]) == (recipe, task, max_proposals))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    gt = require_activitynet_gt()
    folder = tmp_path_factory.mktemp("eval")
    paths = {"gt": str(gt)}
    for recipe in ("shifted", "proposals"):
        path = folder / f"{recipe}.json"
        path.write_text(json.dumps(derived_predictions(activitynet_gt(), recipe)))
        paths[recipe] = str(path)
    return paths


def run(*args: str):
    return CliRunner().invoke(main, ["eval", *args])


def test_detection_table(files):
    result = run("--gt", files["gt"], "--pred", files["shifted"])
    assert result.exit_code == 0, result.output
    average = 100 * expected("shifted", "detection")["average_mAP"]
    assert "average" in result.stdout and f"{average:.2f}" in result.stdout
    assert "4728 videos, 7293 ground-truth segments" in result.stdout


def test_detection_json_is_one_object_of_fractions(files):
    result = run("--gt", files["gt"], "--pred", files["shifted"], "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)  # exactly one JSON document
    assert DETECTION_KEYS <= set(payload)
    assert payload["task"] == "detection" and payload["subset"] == "validation"
    assert payload["mAP"] == pytest.approx(expected("shifted", "detection")["mAP"], abs=1e-9)
    assert all(0 <= x <= 1 for x in payload["mAP"])
    assert (payload["videos"], payload["ground_truth"]) == (4728, 7293)
    assert len(payload["tiou_thresholds"]) == 10


def test_per_class(files):
    result = run("--gt", files["gt"], "--pred", files["shifted"], "--per-class", "--json")
    assert result.exit_code == 0, result.output
    per_class = json.loads(result.stdout)["per_class"]
    assert len(per_class) == 200
    assert sum(c["ground_truth"] for c in per_class.values()) == 7293
    table = run("--gt", files["gt"], "--pred", files["shifted"], "--per-class")
    assert "AP per class" in table.stdout and "Zumba" in table.stdout


def test_proposals_json(files):
    result = run("--gt", files["gt"], "--pred", files["proposals"], "--proposals", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert PROPOSAL_KEYS <= set(payload)
    want = expected("proposals", "proposal")
    assert payload["AUC"] == pytest.approx(want["auc"], abs=1e-9)
    assert payload["AR@100"] == pytest.approx(want["avg_recall"][99], abs=1e-9)
    assert payload["AR@1"] == pytest.approx(want["avg_recall"][0], abs=1e-9)
    assert len(payload["avg_recall"]) == len(payload["proposals_per_video"]) == 100


def test_plot_writes_a_png(files, tmp_path):
    pytest.importorskip("matplotlib")  # the optional lofi[plots] extra
    plot = tmp_path / "curves" / "ar_an.png"
    result = run("--gt", files["gt"], "--pred", files["proposals"], "--proposals", "--plot", str(plot))
    assert result.exit_code == 0, result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {plot}" in result.stderr
    assert list(plot.parent.iterdir()) == [plot]  # no temporary file left behind


def test_proposals_table_with_truncation(files):
    result = run("--gt", files["gt"], "--pred", files["proposals"], "--proposals", "--max-proposals", "5")
    assert result.exit_code == 0, result.output
    auc = 100 * expected("proposals", "proposal", 5)["auc"]
    assert "AUC" in result.stdout and f"{auc:.2f}" in result.stdout
    assert "AR@100" not in result.stdout  # AN = 100 is off the grid when AN_max = 5


def test_plot_without_matplotlib_says_how_to_install(files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if not installed
    result = run("--gt", files["gt"], "--pred", files["proposals"], "--proposals", "--plot",
                 str(tmp_path / "x.png"))
    assert result.exit_code == 2
    assert "needs matplotlib, which is not installed: pip install 'lofi" in result.stderr
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(OptionError, match=r"pip install 'lofi\[plots\]'"):
        plot_ar_an(evaluate_proposals({"database": {"v": {"subset": "validation", "annotations": [
            {"segment": [0, 1], "label": "A"}]}}}, {"results": {}}), tmp_path / "y.png")


def test_bad_prediction_file_is_one_clear_line(files, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"results": {"v": [{"label": "Zumba", "score": "high", "segment": [1, 2]}]}}))
    result = run("--gt", files["gt"], "--pred", str(bad))
    assert result.exit_code == 2
    assert 'bad.json: results["v"][0]: score must be a number, got "high"' in result.stderr
    assert "Traceback" not in result.output


def test_unknown_labels_via_cli(files, tmp_path):
    pred = derived_predictions(activitynet_gt(), "shifted")
    first = next(iter(pred["results"]))
    pred["results"][first].append({"label": "Underwater basket weaving", "score": 0.5, "segment": [0, 1]})
    pred["results"]["not-a-video"] = [{"label": "Zumba", "score": 0.5, "segment": [0, 1]}]
    path = tmp_path / "pred.json"
    path.write_text(json.dumps(pred))
    failed = run("--gt", files["gt"], "--pred", str(path))
    assert failed.exit_code == 2 and "--ignore-unknown-labels" in failed.stderr
    result = run("--gt", files["gt"], "--pred", str(path), "--ignore-unknown-labels", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert (payload["ignored_unknown_labels"], payload["ignored_outside_subset"]) == (1, 1)
    assert payload["average_mAP"] == pytest.approx(expected("shifted", "detection")["average_mAP"], abs=1e-9)
    assert "ignored 1 predictions for videos outside subset" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--plot", "x.png"], "--plot applies to proposals; add --proposals"),
        (["--max-proposals", "10"], "--max-proposals applies to proposals"),
        (["--proposals", "--per-class"], "--per-class applies to detection"),
        (["--tiou-thresholds", "0.5:0.07:0.95"], "expected 'a,b,c' or 'start:step:stop'"),
        (["--subset", "nonsense"], "no video of subset 'nonsense'"),
    ],
)
def test_option_errors(files, args, message):
    result = run("--gt", files["gt"], "--pred", files["shifted"], *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_custom_thresholds(files):
    result = run("--gt", files["gt"], "--pred", files["shifted"], "--tiou-thresholds", "0.3:0.1:0.7", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["tiou_thresholds"] == pytest.approx([0.3, 0.4, 0.5, 0.6, 0.7])
    assert payload["mAP"][2] == pytest.approx(expected("shifted", "detection")["mAP"][0], abs=1e-9)
