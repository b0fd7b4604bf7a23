"""Loading local pre-trained checkpoints: torchvision and TSM (mit-han-lab) layouts,
written by the tests, and clear errors for bad files."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision

from lofi.errors import CheckpointError
from lofi.models.encoders import build_encoder

SHIFTED_CONV = re.compile(r"^(layer\d\.\d+\.conv1)\.weight$")


def _randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill every parameter and BN statistic with seed-dependent values so that a load
    that silently kept the random init is caught."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=g) + (0.5 if "running_var" in name else 0.0)
                tensor.copy_(values)
    return module


def _tsm_checkpoint(torchvision_state: dict[str, torch.Tensor]) -> dict[str, object]:
    """What mit-han-lab/temporal-shift-module's main.py saves for a TSM ResNet: the
    DataParallel TSN state dict (base_model., conv1 wrapped by TemporalShift .net,
    new_fc classifier) inside a dict with training metadata."""
    state = {}
    for key, value in torchvision_state.items():
        if key.startswith("fc."):
            continue  # TSN replaces base_model.fc by Dropout (no parameters)
        key = SHIFTED_CONV.sub(r"\1.net.weight", key)
        state[f"module.base_model.{key}"] = value
    state["module.new_fc.weight"] = torch.randn(400, 512)
    state["module.new_fc.bias"] = torch.zeros(400)
    return {"epoch": 50, "arch": "resnet18", "state_dict": state, "best_prec1": 71.2}


def _assert_loaded(encoder, source_state):
    loaded = encoder.state_dict()
    for key, value in source_state.items():
        if key.startswith("fc."):
            continue
        assert torch.equal(loaded[key], value), key


def test_torchvision_resnet_round_trip(tmp_path):
    resnet = _randomised(torchvision.models.resnet18(weights=None), seed=1)
    # old torchvision files have no num_batches_tracked: accepted
    state = {k: v for k, v in resnet.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(state, path)
    encoder = build_encoder("tsm_r18", pretrained=path)
    _assert_loaded(encoder, state)
    report = encoder.pretrained_report
    assert report.layout == "torchvision" and report.path == str(path)
    assert set(report.ignored) == {"fc.weight", "fc.bias"} and report.loaded == len(state) - 2


def test_tsm_kinetics_round_trip(tmp_path):
    source = _randomised(torchvision.models.resnet18(weights=None), seed=2)
    checkpoint = _tsm_checkpoint(source.state_dict())
    assert "module.base_model.layer1.0.conv1.net.weight" in checkpoint["state_dict"]
    path = tmp_path / "TSM_kinetics_RGB_resnet18_shift8_blockres_avg_segment8_e50.pth"
    torch.save(checkpoint, path)
    encoder = build_encoder("tsm_r18", pretrained=path)
    _assert_loaded(encoder, source.state_dict())
    assert encoder.pretrained_report.layout == "tsm"
    assert set(encoder.pretrained_report.ignored) == {"module.new_fc.weight", "module.new_fc.bias"}
    # same features as the same weights saved in the torchvision layout
    plain_path = tmp_path / "plain.pth"
    torch.save(source.state_dict(), plain_path)
    plain = build_encoder("tsm_r18", pretrained=plain_path).eval()
    clips = torch.randint(0, 256, (1, 2, 2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(encoder.eval()(clips), plain(clips))


def test_r2plus1d_round_trip_into_float64(tmp_path):
    video = _randomised(torchvision.models.video.r2plus1d_18(weights=None), seed=3)
    path = tmp_path / "r2plus1d_18_kinetics.pth"
    torch.save(video.state_dict(), path)
    encoder = build_encoder("r2plus1d_18", pretrained=path, dtype=torch.float64)
    loaded = encoder.state_dict()
    for key, value in video.state_dict().items():
        if not key.startswith("fc."):
            assert loaded[key].dtype == (torch.float64 if value.is_floating_point() else value.dtype), key
            assert torch.equal(loaded[key], value.to(loaded[key].dtype)), key


def test_meta_device_checks_the_file_without_copying(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    encoder = build_encoder("tsm_r18", pretrained=path, device="meta")
    assert encoder.conv1.weight.is_meta and encoder.pretrained_report.loaded > 0
    with pytest.raises(CheckpointError):
        build_encoder("tsm_r50", pretrained=path, device="meta")


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(CheckpointError, match=r"nowhere.*does not exist"):
        build_encoder("tsm_r18", pretrained=path)


def test_wrong_keys_are_named(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    del state["layer2.1.bn2.weight"]
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"odd\.pth.*missing keys layer2\.1\.bn2\.weight.*unexpected keys layer5\.0\.conv1\.weight"):
        build_encoder("tsm_r18", pretrained=path)


def test_other_architecture_is_a_shape_mismatch(tmp_path):
    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"r34\.pth does not fit encoder tsm_r18: unexpected keys layer1\.2"):
        build_encoder("tsm_r18", pretrained=path)
    with pytest.raises(CheckpointError, match=r"shape mismatches layer1\.0\.conv1\.weight \(64, 64, 3, 3\) != \(64, 64, 1, 1\)"):
        build_encoder("tsm_r50", pretrained=path)


@pytest.mark.parametrize(
    "content, message",
    [
        ([1, 2, 3], "holds a list, not a state dict"),
        ({"epoch": 3, "lr": 0.1}, "not a state dict: non-tensor entries epoch, lr"),
        ({}, "not a state dict: no entries"),
    ],
)
def test_not_a_state_dict(tmp_path, content, message):
    path = tmp_path / "thing.pth"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        build_encoder("tsm_r18", pretrained=path)


def test_garbage_and_pickled_modules_are_refused(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"definitely not a torch file")
    with pytest.raises(CheckpointError, match=r"garbage\.pth cannot be read as a weights-only torch file"):
        build_encoder("tsm_r18", pretrained=garbage)
    pickled = tmp_path / "whole_model.pth"
    torch.save(torchvision.models.resnet18(weights=None), pickled)  # a full module, not weights
    with pytest.raises(CheckpointError, match=r"whole_model\.pth cannot be read"):
        build_encoder("tsm_r18", pretrained=pickled)
