"""Trainer pieces on their own: the OOM fallback choice, strict config loading, class
scores for detection fusion, BatchNorm statistics of a random encoder, CPU speed."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from lofi.errors import InputFileError, OptionError
from lofi.train.config import config_from_dict, config_to_dict, load_config
from lofi.train.eval_stage import load_class_scores
from train_helpers import tiny_candidate, tiny_config, tiny_plan


class _Paths:  # the fields tiny_config reads
    annotations = "a.json"
    videos_dir = "videos"
    classification = "c.json"


def test_fallback_takes_the_best_ranked_smaller_candidate_of_the_same_model():
    big = tiny_candidate(batch_per_gpu=4)
    medium = tiny_candidate(batch_per_gpu=2, accumulation=2)
    other_backbone = tiny_candidate(backbone="tsm_r34", batch_per_gpu=1, accumulation=4)
    small = tiny_candidate(batch_per_gpu=1, accumulation=4)
    plan = tiny_plan(big, other_backbone, medium, small, sizes=(20.0, 5.0, 12.0, 8.0))
    assert plan.next_smaller(big).candidate == medium
    assert plan.next_smaller(big, tried=[medium]).candidate == small
    assert plan.next_smaller(small) is None  # nothing smaller is left
    assert plan.entry_for(medium).total_bytes < plan.entry_for(big).total_bytes
    assert plan.entry_for(tiny_candidate(batch_per_gpu=3)) is None


def test_fallback_never_takes_a_candidate_that_does_not_fit():
    big, small = tiny_candidate(batch_per_gpu=4), tiny_candidate(batch_per_gpu=1, accumulation=4)
    plan = tiny_plan(big, small, sizes=(20.0, 8.0))
    plan = replace(plan, candidates=(plan.candidates[0], replace(plan.candidates[1], fits=False)))
    assert plan.next_smaller(big) is None


def test_config_round_trips_and_refuses_unknown_keys(tmp_path):
    config = tiny_config(_Paths)
    assert config_from_dict(json.loads(json.dumps(config_to_dict(config)))) == config
    document = config_to_dict(config)
    document["lofi"]["learning_rate"] = 0.1
    path = tmp_path / "config.json"
    path.write_text(json.dumps(document))
    with pytest.raises(InputFileError, match=r"config.json: lofi: unknown key\(s\) learning_rate"):
        load_config(path)
    path.write_text("{not json")
    with pytest.raises(InputFileError, match=r"config.json: not valid JSON \(line 1, column 2"):
        load_config(path)
    with pytest.raises(OptionError, match="learning rate must be > 0"):
        replace(config.lofi, lr=0.0)


def test_class_scores_follow_the_annotation_classes(tmp_path):
    path = tmp_path / "cls.json"
    path.write_text(json.dumps({"results": {"v1": [0.2, 0.8]}, "class": ["b", "a"]}))
    assert load_class_scores(path, ["a", "b"])["v1"].tolist() == [0.8, 0.2]
    path.write_text(json.dumps({"results": {"v1": [{"label": "a", "score": 0.7}]}}))
    assert load_class_scores(path, ["a", "b"])["v1"].tolist() == [0.7, 0.0]


@pytest.mark.parametrize("document, message", [
    ({"class": ["a"]}, "missing 'results'"),
    ({"results": {"v1": [0.1, 0.2]}, "class": ["a"]}, "neither a list of scores"),
    ({"results": {"v1": [{"label": "a", "score": "high"}]}}, "is not a number"),
])
def test_bad_class_scores_name_the_file_and_the_entry(tmp_path, document, message):
    path = tmp_path / "cls.json"
    path.write_text(json.dumps(document))
    with pytest.raises(InputFileError, match=message) as info:
        load_class_scores(path, ["a", "b"])
    assert "cls.json" in str(info.value)


def test_batchnorm_statistics_come_from_the_clips():
    from lofi.models.encoders import build_encoder
    from lofi.train.initial_model import estimate_batchnorm_statistics

    torch.manual_seed(0)
    encoder = build_encoder("tsm_r18")  # frozen BN, running mean 0 / var 1
    clips = [torch.randint(0, 256, (1, 2, 2, 3, 32, 32), dtype=torch.uint8) for _ in range(2)]
    used = estimate_batchnorm_statistics(encoder, clips, torch.device("cpu"))
    assert used == 2
    assert float(encoder.bn1.running_var.mean()) != pytest.approx(1.0, abs=1e-3)
    assert not encoder.bn1.training  # frozen again afterwards
    before = encoder.bn1.running_mean.clone()
    encoder.train()
    encoder(clips[0])
    assert torch.equal(encoder.bn1.running_mean, before)


def test_cpu_throughput_is_measured_and_replaces_the_constant():
    from planner.hardware.cpu_speed import measure_cpu_tflops, with_measured_speed
    from planner.hardware.profiles import get_profile

    tflops = measure_cpu_tflops(seconds=0.2)
    assert 1e-4 < tflops < 100
    measured = with_measured_speed(get_profile("cpu"), seconds=0.2)
    assert measured.fp32_tflops != get_profile("cpu").fp32_tflops
    assert "measured here" in measured.source
    assert with_measured_speed(get_profile("t4")) == get_profile("t4")  # GPUs keep their datasheet
