"""estimate_candidate / estimate_grid on the reference workload: the MemoryEstimate's
categories and overheads, C-LoFi cycles, DDP/NCCL terms, time from FLOPs, the trace cache,
the overheads file."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from planner.candidate import Candidate
from planner.errors import ProfileError
from planner.trace_store import TRACE_BATCHES
from planner.estimate import estimate_candidate, estimate_grid
from planner.fidelity import Fidelity
from planner.hardware.gpu_profile import GpuProfile
from planner.cost.overheads import default_path, load_overheads, nccl_bytes, workspace_bytes
from planner.cost.timing import sustained_flops
from planner.tracing.step import Tracer
from planner.tracing.cache import TraceCache, trace_key
from planner.workload import ModelSpec, StepSpec, TorchvisionWorkload

GiB = 1 << 30
SMALL, LARGE = Fidelity(1, 64), Fidelity(1, 96)

VIDEOS = 9649  # videos per epoch (ActivityNet-1.3 training, the LoFi default)
V100 = GpuProfile(
    name="test-v100", display_name="test V100", memory_bytes=32 * GiB, fp32_tflops=15.7, fp16_tflops=125.0,
    bf16_tflops=None, bandwidth_gbps=900.0, source="test", hourly_usd=2.0, price_source="test",
)
H100 = dataclasses.replace(V100, name="test-h100", fp32_tflops=67.0, fp16_tflops=989.5, bf16_tflops=989.5,
                           compute_capability="9.0")
CPU = GpuProfile(name="test-cpu", display_name="cpu", memory_bytes=64 * GiB, fp32_tflops=0.1, fp16_tflops=0.1,
                 bf16_tflops=None, bandwidth_gbps=20.0, source="test", cuda_context_bytes=0, workspace_bytes=0,
                 kind="cpu")


def candidate(batch=2, fidelity=SMALL, **kwargs):
    return Candidate(backbone="resnet18", head="none", batch_per_gpu=batch, fidelity=fidelity, **kwargs)


@pytest.fixture(scope="module")
def cache():
    return TraceCache.in_memory()


@pytest.fixture(scope="module")
def workload():
    return TorchvisionWorkload()


def test_memory_estimate_adds_up(workload, cache):
    estimate = estimate_candidate(candidate(precision="fp16"), workload, V100, videos_per_epoch=VIDEOS, cache=cache)
    memory = estimate.memory
    overheads = load_overheads()
    assert memory.source == "estimated" and memory.calibration == overheads.label
    assert memory.parameters > 40e6  # resnet18: 11.7M fp32 parameters (+ buffers)
    assert memory.allocator_slack >= 0 and memory.activations > 0
    assert memory.context == int(overheads.cuda_context_bytes.value)
    # a convolution is running at the peak: both cuBLAS workspaces and one cuDNN workspace are live
    assert memory.workspace == workspace_bytes(V100, overheads)
    assert memory.ddp is None and memory.nccl is None  # one GPU
    assert memory.allocated_peak == (memory.parameters + memory.gradients + memory.optimizer_state
                                     + memory.activations + memory.workspace)
    assert memory.allocated_peak <= memory.needed_capacity <= memory.reserved_peak
    assert memory.total == memory.needed_capacity + memory.context


def test_ddp_and_nccl_only_with_several_gpus(workload, cache):
    one, four = estimate_grid([candidate(), candidate(gpus=4)], workload, V100, videos_per_epoch=VIDEOS, cache=cache)
    overheads = load_overheads()
    assert four.memory.nccl == nccl_bytes(4, overheads)
    cap = int(overheads.ddp_bucket_cap_bytes.value)
    # the trainer's averaging keeps one flat bucket alive at a time: at most the 25 MiB cap
    # (or one gradient larger than it), allocator-rounded; never a copy of every gradient
    assert 2**20 <= four.memory.ddp <= max(cap, 4 * 512 * 512 * 9) + 2 * 2**20
    assert four.memory.ddp < one.memory.parameters
    assert four.memory.allocated_peak == one.memory.allocated_peak  # per-rank memory is the same


def test_accumulation_keeps_gradients_alive(workload, cache):
    single, accumulated = estimate_grid([candidate(), candidate(accumulation=4)], workload, V100, videos_per_epoch=VIDEOS, cache=cache)
    assert accumulated.memory.allocated_peak >= single.memory.allocated_peak
    assert accumulated.time.seconds_per_step == pytest.approx(4 * single.time.seconds_per_step)


def test_cycle_takes_the_largest_member_and_mean_time(workload, cache):
    cycle = Candidate("resnet18", "none", 2, cycle=(SMALL, LARGE))
    small, large, both = estimate_grid([candidate(), candidate(fidelity=LARGE), cycle], workload, V100, videos_per_epoch=VIDEOS, cache=cache)
    assert both.memory == max(small.memory, large.memory, key=lambda m: m.total)
    assert both.time.seconds_per_step == pytest.approx((small.time.seconds_per_step + large.time.seconds_per_step) / 2)


def test_time_scales_with_flops(workload, cache):
    small, large = estimate_grid([candidate(batch=2), candidate(batch=4)], workload, V100, videos_per_epoch=VIDEOS, cache=cache)
    ratio = large.time.flops_per_step / small.time.flops_per_step
    assert 1.9 < ratio < 2.1  # FLOPs ~ batch
    assert large.time.seconds_per_step / small.time.seconds_per_step == pytest.approx(ratio)
    assert small.time.seconds_per_step == pytest.approx(small.time.flops_per_step / sustained_flops(V100, "fp32", load_overheads()))
    assert small.time.cost_per_epoch_usd == pytest.approx(small.time.seconds_per_epoch / 3600 * 2.0)
    # an epoch of 9649 videos at global batch 2
    assert small.time.seconds_per_epoch == pytest.approx(4825 * small.time.seconds_per_step)


def test_faster_gpu_and_precision_take_less_time(workload, cache):
    fp32, fp16 = estimate_grid([candidate(), candidate(precision="fp16")], workload, V100, videos_per_epoch=VIDEOS, cache=cache)
    assert fp16.time.seconds_per_step < fp32.time.seconds_per_step
    h100 = estimate_candidate(candidate(precision="bf16"), workload, H100, videos_per_epoch=VIDEOS, cache=cache)
    assert h100.time.seconds_per_step < fp16.time.seconds_per_step
    assert h100.memory.workspace > fp16.memory.workspace  # 32 MiB cuBLAS workspaces from sm90 on
    assert estimate_candidate(candidate(precision="bf16"), workload, V100, videos_per_epoch=VIDEOS, cache=cache).time is None


def test_cpu_target_uses_the_plain_allocator(workload, cache):
    estimate = estimate_candidate(candidate(), workload, CPU, videos_per_epoch=VIDEOS, cache=cache)
    assert estimate.memory.allocator_slack == 0 and estimate.memory.context == 0 and estimate.memory.workspace == 0


def test_needed_capacity_does_not_depend_on_the_device(workload, cache):
    """The verdict's number is the capacity the step needs, bisected with the allocator's
    release path: the same on any device, at most the unconstrained reserved peak, and
    the replay at it has no OOM while 32 MiB less would have one (planner.cost.allocator)."""
    from planner.step_memory import step_memory
    from planner.cost.overheads import workspaces
    from planner.workload import step_specs

    c = candidate(batch=8, fidelity=LARGE)
    roomy = estimate_candidate(c, workload, V100, videos_per_epoch=VIDEOS, cache=cache).memory
    small = dataclasses.replace(V100, memory_bytes=roomy.allocated_peak + roomy.context)
    assert estimate_candidate(c, workload, small, videos_per_epoch=VIDEOS, cache=cache).memory == roomy
    assert roomy.allocated_peak <= roomy.needed_capacity <= roomy.reserved_peak
    trace = Tracer(workload).trace(step_specs(c, "cuda")[0].canonical(), 8)
    step = step_memory(trace, 1, "cuda", workspaces(V100, load_overheads()))
    assert step.needed - step.free.allocated_peak == roomy.allocator_slack


def test_trace_cache_round_trip_and_invalidation(tmp_path, workload):
    step = StepSpec(ModelSpec("resnet18", "none", SMALL))
    trace = Tracer(workload).trace(step, 2)
    key = trace_key(workload.key, step, 2)
    TraceCache(tmp_path).put(key, trace)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    loaded = TraceCache(tmp_path).get(key)
    assert loaded is not None and loaded.same_structure(trace) and np.array_equal(loaded.sizes, trace.sizes)
    assert loaded.flops == trace.flops and loaded.grad_bytes == trace.grad_bytes
    # anything the trace depends on changes the key
    assert TraceCache(tmp_path).get(trace_key("other-workload/2", step, 2)) is None
    assert TraceCache(tmp_path).get(trace_key(workload.key, step, 3)) is None
    assert trace_key(workload.key, dataclasses.replace(step, precision="bf16"), 2) == trace_key(
        workload.key, dataclasses.replace(step, precision="fp16"), 2)  # bf16 traces as fp16
    # a corrupt file is ignored
    path = TraceCache(tmp_path).path(key)
    path.write_bytes(b"not a trace")
    assert TraceCache(tmp_path).get(key) is None


def test_grid_traces_each_step_once_and_reuses_the_disk_cache(tmp_path, workload):
    candidates = [candidate(batch=b, precision=p) for b in (1, 2, 4, 8) for p in ("fp32", "fp16", "bf16")]
    calls = []
    first = estimate_grid(candidates, workload, H100, videos_per_epoch=VIDEOS, cache=TraceCache(tmp_path), progress=lambda d, t: calls.append((d, t)))
    files = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*.npz")}
    assert len(files) == 2 * len(TRACE_BATCHES)  # fp32 and fp16 (= bf16), at the traced batch sizes
    assert calls[0][0] == 0 and calls[-1][0] == calls[-1][1] > len(candidates)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    again = estimate_grid(candidates, workload, H100, videos_per_epoch=VIDEOS, cache=TraceCache(tmp_path))
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*.npz")} == files  # read, not traced again
    assert [e.memory for e in again] == [e.memory for e in first]


def test_overheads_file_is_strict(tmp_path):
    overheads = load_overheads()
    for field in dataclasses.fields(overheads):
        if field.name not in ("version", "calibration"):
            assert getattr(overheads, field.name).source.strip()
    document = json.loads(default_path().read_text())
    document["surprise"] = {"value": 1, "source": "x"}
    path = tmp_path / "overheads.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ProfileError, match="unknown key"):
        load_overheads(path)
    del document["surprise"]
    document["nccl_channels"] = {"value": 4}
    path.write_text(json.dumps(document))
    with pytest.raises(ProfileError, match="nccl_channels"):
        load_overheads(path)
    assert os.path.basename(default_path()) == "overheads.json"
