"""Action-classification pre-training (the ACP stage) at tiny scale: the pure instance
sampling, the weights it writes, pretrain -> ACP (frozen) -> eval and pretrain -> LoFi
with TSM partialBN, and `lofi pretrain` from the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lofi.cli import main
from lofi.models.encoders import build_encoder
from lofi.train.checkpoint import load_checkpoint
from lofi.train.config import OptimConfig, PretrainConfig, config_from_dict, config_to_dict, encoder_bn_mode
from lofi.train.distributed import setup_distributed
from lofi.train.pipeline import run_pipeline
from lofi.train.pretrain_stage import instance_snippets, read_manifest
from lofi.train.run_folder import RunFolder
from train_helpers import make_tiny_dataset, tiny_config, tiny_plan

TINY_PRETRAIN = PretrainConfig(OptimConfig("adam", lr=1e-3, epochs=1, step_epochs=1), snippets_per_clip=2,
                               videos_per_batch=2, seed=0)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("synth") / "data")


def test_instance_snippets_take_the_centres_inside_or_the_nearest():
    # 8 snippets over 16 s: centres 1, 3, ..., 15 s
    chosen = instance_snippets(np.array([[2.0, 7.0], [7.5, 8.5], [15.0, 16.0]]), 16.0, 8)
    assert [list(c) for c in chosen] == [[1, 2, 3], [3], [7]]  # [7.5, 8.5] holds no centre: nearest is 7 s


def test_pretrain_then_acp_then_lofi_from_the_same_weights(tiny_data, tmp_path):
    weights = tmp_path / "pretrained" / "encoder.pt"
    context = setup_distributed(prefer_cuda=False)
    acp = tiny_config(tiny_data, baseline=True, pretrained=str(weights), pretrain=TINY_PRETRAIN, freeze_bn=None)
    assert config_from_dict(json.loads(json.dumps(config_to_dict(acp)))) == acp
    acp_run = RunFolder(tmp_path / "acp")
    summary = run_pipeline(acp, tiny_plan(), acp_run, context).summary

    # pretrain wrote torchvision-layout weights (classifier included) and its manifest
    assert summary["stages"]["pretrain"]["reused"] is False and weights.is_file()
    manifest = read_manifest(weights)
    assert manifest["epochs"] == 1 and manifest["clips"] > 0 and len(manifest["history"]) == 1 and manifest["classes"] == ["slide_right", "slide_up"]
    state = torch.load(weights, weights_only=True)
    assert state["fc.weight"].shape == (2, 512)
    encoder = build_encoder("tsm_r18", pretrained=str(weights))
    assert encoder.pretrained_report.layout == "torchvision" and encoder.pretrained_report.ignored == ("fc.weight", "fc.bias")
    random = build_encoder("tsm_r18")
    assert not torch.equal(encoder.layer1[0].conv1.weight, random.layer1[0].conv1.weight)
    # ACP: no LoFi stage, features from the frozen pre-trained encoder, evaluated
    assert "lofi" not in summary["stages"] and not acp_run.lofi_checkpoints.exists()
    assert summary["stages"]["features"]["encoder"].endswith(f"pretrained={weights}")
    assert acp_run.results.exists() and len(summary["metrics"]["detection"]["mAP"]) == 10

    # LoFi from the same weights (not pre-trained again) with TSM partialBN
    lofi = tiny_config(tiny_data, pretrained=str(weights), pretrain=TINY_PRETRAIN, freeze_bn=None)
    assert encoder_bn_mode(lofi) == "partial"  # TSM partialBN: the default for pre-trained weights
    lofi_run = RunFolder(tmp_path / "lofi")
    summary = run_pipeline(lofi, tiny_plan(), lofi_run, context).summary
    assert summary["stages"]["pretrain"]["reused"] is True and summary["stages"]["lofi"]["steps"] == 4
    trained = load_checkpoint(lofi_run.lofi_checkpoints).state["model"]
    start = encoder.state_dict()
    norms = [name.removesuffix(".running_mean") for name in start if name.endswith("running_mean")]
    assert norms[0] == "bn1"
    for name in norms[1:]:  # frozen statistics AND frozen affine parameters
        for part in ("running_mean", "running_var", "weight", "bias"):
            assert torch.equal(trained[f"encoder.{name}.{part}"], start[f"{name}.{part}"]), (name, part)
    assert not torch.equal(trained["encoder.bn1.running_mean"], start["bn1.running_mean"])
    assert not torch.equal(trained["encoder.bn1.weight"], start["bn1.weight"])
    assert not torch.equal(trained["encoder.layer1.0.conv1.weight"], start["layer1.0.conv1.weight"])
    assert lofi_run.results.exists()


def test_lofi_from_pretrained_weights_with_frozen_bn_keeps_every_statistic(tiny_data, tmp_path):
    weights = tmp_path / "encoder.pt"
    config = tiny_config(tiny_data, pretrained=str(weights), pretrain=TINY_PRETRAIN, freeze_bn=None, bn_mode="frozen")
    run = RunFolder(tmp_path / "run")
    run_pipeline(config, tiny_plan(), run, setup_distributed(prefer_cuda=False), stages=("pretrain", "lofi"))
    start = torch.load(weights, weights_only=True)
    trained = load_checkpoint(run.lofi_checkpoints).state["model"]
    for name, value in start.items():
        if "running" in name:
            assert torch.equal(trained[f"encoder.{name}"], value), name
    assert not torch.equal(trained["encoder.layer4.1.bn2.weight"], start["layer4.1.bn2.weight"])


def test_lofi_pretrain_command_writes_weights_train_reads(tiny_data, tmp_path):
    out = tmp_path / "w" / "encoder.pt"
    args = ["pretrain", "--annotations", str(tiny_data.annotations), "--videos", str(tiny_data.videos_dir),
            "--full-tr", "8", "--full-sr", "32", "--frames-per-snippet", "2", "--stride", "2", "--epochs", "1",
            "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert out.is_file() and read_manifest(out)["flip"] is True  # the user's data: flips on
    assert "lofi train --auto --pretrained" in result.output
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "found, not retrained" in again.output
    build_encoder("tsm_r18", pretrained=str(out))
    bad = CliRunner().invoke(main, ["pretrain", "--annotations", str(tmp_path / "none.json"), "--videos", str(tmp_path)])
    assert bad.exit_code == 2 and "none.json" in bad.output


def test_synthetic_runs_start_from_cached_pretraining_unless_from_scratch(tiny_data, tmp_path, monkeypatch):
    from lofi.train.config import SYNTH_PRETRAIN
    from lofi.train.options import RecipeOverrides, ResolvedData, build_config

    monkeypatch.setenv("LOFI_CACHE", str(tmp_path / "cache"))
    data = tiny_config(tiny_data).data
    resolved = ResolvedData(data, synthetic=True, training_videos=4)
    lofi = build_config(resolved, tiny_plan(), RecipeOverrides(), pretrained=None, baseline=False)
    acp = build_config(resolved, tiny_plan(), RecipeOverrides(), pretrained=None, baseline=True)
    assert lofi.pretrain == SYNTH_PRETRAIN and lofi.pretrained == acp.pretrained
    assert lofi.pretrained.startswith(str(tmp_path / "cache" / "pretrained-")) and lofi.pretrained.endswith("encoder.pt")
    scratch = build_config(resolved, tiny_plan(), RecipeOverrides(), pretrained=None, baseline=False, from_scratch=True)
    assert scratch.pretrain is None and scratch.pretrained is None
    own = build_config(resolved, tiny_plan(), RecipeOverrides(), pretrained="w.pt", baseline=False)
    assert own.pretrain is None and own.pretrained == "w.pt"
    user = build_config(ResolvedData(data, synthetic=False, training_videos=4), tiny_plan(), RecipeOverrides(),
                        pretrained=None, baseline=False)
    assert user.pretrain is None and user.pretrained is None
