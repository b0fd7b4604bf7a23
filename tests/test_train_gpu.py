"""The trainer on a real GPU: an out-of-memory error despite the plan moves to the next
smaller candidate and finishes; half precision runs and reports peak memory."""

from __future__ import annotations

import pytest
import torch

from lofi.train.distributed import setup_distributed
from lofi.train.pipeline import run_pipeline
from lofi.train.run_folder import RunFolder
from planner.fidelity import Fidelity
from train_helpers import make_tiny_dataset, tiny_candidate, tiny_config, tiny_plan

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("synth") / "data")


def test_cuda_oom_falls_back_to_the_next_smaller_candidate(tiny_data, tmp_path):
    big = tiny_candidate(fidelity=Fidelity(16, 224, 8), batch_per_gpu=2)  # ~10 GiB of activations
    small = tiny_candidate(fidelity=Fidelity(4, 32, 2), batch_per_gpu=1, accumulation=2)
    plan = tiny_plan(big, small, sizes=(10.0, 1.0))
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, 3 * 2**30 / total))  # a 3 GiB GPU
    try:
        result = run_pipeline(tiny_config(tiny_data), plan,
                              RunFolder(tmp_path / "run"), setup_distributed(), stages=("lofi",))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    lofi = result.summary["stages"]["lofi"]
    assert lofi["completed"]
    assert len(lofi["fallbacks"]) == 1 and "16/224" in lofi["fallbacks"][0]["from"]
    assert lofi["candidate"].startswith("4/32")
    assert lofi["peak_reserved_bytes"] is not None


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_lofi_stage_reports_peak_memory(tiny_data, tmp_path, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    plan = tiny_plan(tiny_candidate(precision=precision))
    result = run_pipeline(tiny_config(tiny_data), plan, RunFolder(tmp_path / precision), setup_distributed())
    lofi = result.summary["stages"]["lofi"]
    assert lofi["completed"] and lofi["last_loss"] is not None and lofi["last_loss"] == lofi["last_loss"]
    assert 0 < lofi["peak_allocated_bytes"] <= lofi["peak_reserved_bytes"]
    assert result.summary["metrics"]["proposals"]["AUC"] >= 0.0
