"""plan.json: round trip, atomic write, and clear errors for hand-broken files."""

from __future__ import annotations

import json

import pytest

from planner.errors import PlanFileError
from lofi.fidelities import C_LOFI_CYCLE
from planner.plan_file import SCHEMA, VERSION, load_plan, plan_from_dict, plan_to_dict, save_plan
from planner.plan import Measurement
from plan_helpers import make_plan


def test_round_trip_keeps_everything_the_trainer_needs(tmp_path):
    plan = make_plan(measured={1: Measurement(oom=False, max_allocated_bytes=10, max_reserved_bytes=12, nvml_used_bytes=20, step_seconds=0.5, device="NVIDIA H100 80GB HBM3")})
    path = save_plan(plan, tmp_path / "out" / "plan.json")
    document = json.loads(path.read_text())
    assert document["schema"] == SCHEMA and document["version"] == VERSION
    assert document["hardware"]["name"] == "v100-32gb" and document["hardware"]["memory_bytes"] == 32 * 2**30
    chosen = document["chosen"]
    assert chosen["cycle"] == [{"tr": f.tr, "sr": f.sr, "frames_per_snippet": 8} for f in C_LOFI_CYCLE]
    assert chosen["tr"] is None and chosen["backbone"] == "tsm_r34" and chosen["accumulation"] == 8
    assert chosen["precision"] == "fp16" and chosen["checkpointing"] == "chunk:4" and chosen["optimizer"] == "sgd"
    assert document["estimate"]["total_bytes"] == 20 * 2**30
    assert [c["fits"] for c in document["candidates"]] == [True, True, False]
    assert document["candidates"][2]["reason"].startswith("does not fit")
    assert document["candidates"][0]["measured"]["nvml_used_bytes"] == 20
    assert document["dataset"]["videos_per_epoch"] == 9649
    loaded = load_plan(path)
    assert loaded == plan
    assert loaded.chosen.cycle == C_LOFI_CYCLE
    assert not list((tmp_path / "out").glob(".*tmp"))  # no temporary left behind


def test_save_replaces_atomically(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text("old")
    save_plan(make_plan(), path)
    assert load_plan(path).scope.hardware.name == "v100-32gb"


def _broken(tmp_path, edit):
    document = plan_to_dict(make_plan())
    edit(document)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(version=1), "plan schema version 1; this lofi reads version 2"),
        (lambda d: d.update(schema="other"), "not a lofi plan"),
        (lambda d: d["chosen"].update(batch_per_gpu="two"), r"chosen\.batch_per_gpu: expected an integer >= 1, got 'two'"),
        (lambda d: d["chosen"].update(precision="fp8"), r"chosen: precision must be one of"),
        (lambda d: d["chosen"].update(colour="red"), r"chosen: unknown key\(s\) colour"),
        (lambda d: d["candidates"][1]["estimate"]["memory"].pop("activations"), r"candidates\[1\]\.estimate\.memory\.activations: missing"),
        (lambda d: d["candidates"][0]["estimate"].update(total_bytes=1), r"candidates\[0\]\.estimate\.total_bytes: 1 differs"),
        (lambda d: d["estimate"]["memory"].update(total=5), r"estimate\.memory\.total: 5 differs from the sum"),
        (lambda d: d["chosen"].update(tr=25), "a cycle candidate has tr, sr and frames_per_snippet null"),
        (lambda d: d.update(margin=1.5), r"margin must be in \[0, 1\)"),
        (lambda d: d.update(candidates=[]), "candidates is empty"),
        (lambda d: d["hardware"].update(detected="yes"), r"hardware\.detected: expected true or false"),
    ],
)
def test_hand_broken_files_get_errors_naming_the_field(tmp_path, edit, message):
    with pytest.raises(PlanFileError, match=message):
        load_plan(_broken(tmp_path, edit))


def test_missing_and_non_json_files(tmp_path):
    with pytest.raises(PlanFileError, match="plan file not found: .*nope.json .*lofi plan"):
        load_plan(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "lofi.plan",\n  "version": 1,,}')
    with pytest.raises(PlanFileError, match=r"bad.json: not valid JSON \(line 2"):
        load_plan(bad)
    with pytest.raises(PlanFileError, match="top level: expected an object, got list"):
        plan_from_dict([1, 2])
