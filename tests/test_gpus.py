"""`lofi gpus` and the NVML mapping: names NVML reports map to profiles (memory decides
between sizes), unknown GPUs get a profile from NVML's figures, no GPU is a message."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from lofi.cli import main
from planner.errors import ProfileError
from planner.hardware.nvml import (
    Detection,
    NvmlFigures,
    detect_gpus,
    match_profile,
    profile_from_nvml,
    resolve,
    resolve_target,
)
from planner.hardware.profiles import list_profiles

PROFILES = list_profiles()
MiB = 2**20


@pytest.mark.parametrize(
    "name, total_mib, expected",
    [
        ("Tesla V100-SXM2-32GB", 32510, "v100-32gb"),
        ("Tesla V100-PCIE-16GB", 16160, "v100-16gb"),
        ("Tesla V100S-PCIE-32GB", 32510, "v100-32gb"),
        ("NVIDIA A100-SXM4-40GB", 40536, "a100-40gb"),
        ("NVIDIA A100 80GB PCIe", 81920, "a100-80gb"),
        ("NVIDIA H100 80GB HBM3", 81559, "h100-80gb"),
        ("NVIDIA H200", 143771, "h200-141gb"),
        ("NVIDIA L4", 23034, "l4-24gb"),
        ("NVIDIA GeForce RTX 3090", 24576, "rtx3090"),
        ("NVIDIA GeForce RTX 4090", 24564, "rtx4090"),
        ("Tesla T4", 15360, "t4"),
        ("NVIDIA L40S", 46068, None),  # not "L4"
        ("NVIDIA H100 NVL", 95830, None),  # 94 GB: no profile of that size
        ("NVIDIA GH200 480GB", 97871, None),
    ],
)
def test_nvml_names_map_to_profiles(name, total_mib, expected):
    profile = match_profile(name, total_mib * MiB, PROFILES)
    assert (profile.name if profile else None) == expected


def test_detected_gpu_keeps_nvmls_memory():
    figures = NvmlFigures(0, "NVIDIA H100 80GB HBM3", 81559 * MiB, 500 * MiB, (9, 0))
    gpu = resolve(figures, PROFILES)
    assert gpu.matched == "h100-80gb"
    assert gpu.profile.memory_bytes == 81559 * MiB and gpu.profile.bf16_tflops == 989.5


def test_unknown_gpu_gets_a_profile_from_nvml_figures():
    figures = NvmlFigures(0, "NVIDIA L40S", 46068 * MiB, 0, (8, 9), cuda_cores=18176,
                          max_sm_clock_mhz=2520, max_memory_clock_mhz=9001, memory_bus_width_bits=384)
    profile = profile_from_nvml(figures)
    assert profile.name == "l40s" and profile.memory_bytes == 46068 * MiB
    assert profile.fp32_tflops == pytest.approx(18176 * 2 * 2.52e9 / 1e12, abs=0.1)  # 91.6 on the datasheet
    assert profile.bandwidth_gbps == pytest.approx(864, rel=0.01)
    assert profile.supports_bf16
    assert not profile_from_nvml(NvmlFigures(0, "Tesla P100", 16 * 2**30, 0, (6, 0))).supports_bf16


def test_no_gpu_here_is_an_empty_result_with_a_reason():
    detection = detect_gpus(PROFILES)  # this machine has no NVIDIA driver
    if detection.gpus:
        pytest.skip("a GPU is visible here")
    assert detection.reason and detection.driver is None


def test_target_auto_without_gpu_is_the_papers_v100_with_a_notice():
    nothing = Detection((), None, "NVML Shared Library Not Found")
    target = resolve_target("auto", PROFILES, detection=nothing)
    assert target.profile.name == "v100-32gb" and not target.detected
    assert "no NVIDIA GPU visible here (NVML Shared Library Not Found)" in target.notices[0]
    assert resolve_target("auto", PROFILES, detection=nothing, fallback="cpu").profile.kind == "cpu"


def test_target_auto_with_a_gpu_and_by_name():
    gpu = resolve(NvmlFigures(0, "NVIDIA L4", 23034 * MiB, 4000 * MiB), PROFILES)
    target = resolve_target("auto", PROFILES, gpus=2, detection=Detection((gpu,), "550.54", None))
    assert target.detected and target.profile.name == "l4-24gb" and target.profile.memory_bytes == 23034 * MiB
    assert any("2 GPUs of this kind; 1 visible" in n for n in target.notices)
    assert any("already has 3.9 GiB in use" in n for n in target.notices)
    assert resolve_target("A100-80GB", PROFILES).profile.name == "a100-80gb"
    with pytest.raises(ProfileError, match="unknown GPU profile 'b200'"):
        resolve_target("b200", PROFILES)


def test_lofi_gpus_command():
    result = CliRunner().invoke(main, ["gpus"])
    assert result.exit_code == 0, result.output
    if not detect_gpus(PROFILES).gpus:
        assert "No GPU visible here" in result.output
    for name in ("v100-32gb", "h200-141gb", "rtx4090", "cpu"):
        assert name in result.output
