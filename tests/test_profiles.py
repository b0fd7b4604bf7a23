"""Hardware profiles and the paper's evidence: every shipped file loads, figures are the
datasheets' dense numbers, and malformed files fail with a message naming the field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from planner.errors import ProfileError
from planner.hardware.profiles import (
    DEFAULT_GPU,
    PROFILES_ENV,
    available_ram_bytes,
    get_profile,
    list_profiles,
    profile_from_dict,
    profiles_dir,
)
from lofi.paper_quality import load_evidence

GiB = 2**30
EXPECTED = {
    "v100-16gb", "v100-32gb", "a100-40gb", "a100-80gb", "h100-80gb", "h200-141gb",
    "l4-24gb", "rtx3090", "rtx4090", "t4", "cpu",
}


def test_every_profile_loads_and_cites_a_source():
    profiles = {p.name: p for p in list_profiles()}
    assert set(profiles) == EXPECTED
    for profile in profiles.values():
        assert profile.memory_bytes > 0
        assert profile.source
        if profile.kind == "gpu":
            assert "https://" in profile.source, profile.name
            assert profile.nvml_match, profile.name
        if profile.hourly_usd is not None:
            assert profile.price_source


def test_datasheet_figures_are_dense_and_bf16_only_where_the_gpu_has_it():
    v100 = get_profile("v100-32gb")
    assert v100.memory_bytes == 32 * GiB
    assert (v100.fp32_tflops, v100.fp16_tflops) == (15.7, 125.0)
    assert not v100.supports_bf16 and not get_profile("t4").supports_bf16  # Volta, Turing
    h100 = get_profile("H100-80GB")  # names are case-insensitive
    assert h100.bf16_tflops == pytest.approx(1979 / 2, abs=0.5)  # datasheet 1,979 is with sparsity
    assert get_profile("a100-40gb").bf16_tflops == 312.0
    assert get_profile("l4-24gb").fp16_tflops == pytest.approx(242 / 2, abs=0.5)
    assert get_profile("h200-141gb").memory_bytes == 141 * GiB
    assert DEFAULT_GPU == "v100-32gb"


def test_cpu_profile_memory_is_the_available_ram_now():
    cpu = get_profile("cpu")
    assert cpu.kind == "cpu"
    assert cpu.bf16_tflops is None and cpu.cuda_context_bytes == 0
    now = available_ram_bytes()
    assert now > 0
    assert abs(cpu.memory_bytes - now) < 0.25 * now  # read at run time, not stored


def test_unknown_profile_lists_the_known_names():
    with pytest.raises(ProfileError, match="unknown GPU profile 'v200'.*v100-32gb"):
        get_profile("v200")
    with pytest.raises(ProfileError, match="unknown GPU profile"):
        get_profile("../profiles/gpus/t4")


def _document(**changes):
    base = json.loads((profiles_dir() / "gpus" / "t4.json").read_text())
    base.update(changes)
    return base


def test_unknown_and_wrong_keys_are_errors_naming_the_field():
    with pytest.raises(ProfileError, match="unknown key.*memory_gb"):
        profile_from_dict(_document(memory_gb=16), "t4.json")
    with pytest.raises(ProfileError, match="t4.json: fp32_tflops must be a positive number"):
        profile_from_dict(_document(fp32_tflops="fast"), "t4.json")
    with pytest.raises(ProfileError, match="memory_bytes 'available' is only for kind 'cpu'"):
        profile_from_dict(_document(memory_bytes="available"), "t4.json")
    with pytest.raises(ProfileError, match="hourly_usd needs a price_source"):
        profile_from_dict(_document(hourly_usd=1.0), "t4.json")
    missing = _document()
    del missing["bandwidth_gbps"]
    with pytest.raises(ProfileError, match="missing key.*bandwidth_gbps"):
        profile_from_dict(missing, "t4.json")


def test_profiles_folder_can_be_overridden(tmp_path, monkeypatch):
    root = tmp_path / "profiles"
    (root / "gpus").mkdir(parents=True)
    shutil.copy(profiles_dir() / "gpus" / "t4.json", root / "gpus" / "t4.json")
    (root / "gpus" / "broken.json").write_text("{not json")
    monkeypatch.setenv(PROFILES_ENV, str(root))
    assert profiles_dir() == root
    assert get_profile("t4").name == "t4"
    with pytest.raises(ProfileError, match=r"broken.json: not valid JSON \(line 1"):
        list_profiles()


def test_profiles_folder_sits_beside_the_planner_package():
    import planner

    assert profiles_dir() == Path(planner.__file__).resolve().parent.parent / "profiles"


def test_evidence_holds_the_papers_numbers():
    rows = {(e.backbone, tuple(f.label() for f in e.fidelities), e.is_cycle): e for e in load_evidence()}
    assert rows[("tsm_r18", ("25/112",), False)].avg_map == 33.99  # supp. Table B, 1 x V100
    assert rows[("tsm_r18", ("25/112",), False)].hardware == "1 x V100 32GB"
    assert rows[("tsm_r50", ("25/112",), False)].avg_map == 34.23
    assert rows[("tsm_r18", ("25/224",), False)].avg_map == 34.32
    assert rows[("tsm_r50", ("100/112", "25/224", "50/158"), True)].avg_map == 34.96
    assert all("NeurIPS 2021" in e.source for e in rows.values())


def test_every_gpu_profile_names_its_compute_capability():
    from planner.hardware.profiles import list_profiles

    for profile in list_profiles():
        if profile.kind == "gpu":
            assert profile.compute_capability is not None, profile.name
            assert profile.capability >= (7, 0)
            assert profile.supports_bf16 == (profile.capability >= (8, 0)), profile.name


def test_a_malformed_compute_capability_is_refused():
    import pytest

    from planner.errors import ProfileError
    import json

    from planner.hardware.profiles import gpus_dir, profile_from_dict

    document = json.loads((gpus_dir() / "a100-40gb.json").read_text())
    document["compute_capability"] = "eight"
    with pytest.raises(ProfileError, match="compute_capability"):
        profile_from_dict(document, "a100-40gb.json")
