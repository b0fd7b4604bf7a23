"""Tracing a training step on meta/fake tensors: exact parameter and gradient bytes, the
MemTracker cross-check, synthesis of the steady state and of other batch sizes,
checkpointing, the autocast emulation against the real AutocastCUDA kernels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from planner.tracing import recorder as trace_module
from planner.tracing import step as tracer_module
from planner.cost.allocator import ALLOC
from planner.cost.replay import replay
from planner.tracing.autocast import AutocastBannedError, CudaAutocastEmulation, policy_of
from planner.fidelity import Fidelity
from planner.tracing.synthesis import StructureMismatch, extrapolate, steady_state
from planner.tracing.recorder import ACTIVATION, GRADIENT, INPUT, OPTIMIZER_STATE, PARAMETER
from planner.tracing.step import Tracer, run_step
from planner.workload import ModelSpec, StepSpec, TorchvisionWorkload, sgd_or_adam

META = torch.device("meta")


@dataclass(frozen=True)
class MlpWorkload:
    """Two Linear layers with a residual: every byte is known."""

    key: str = "test-mlp/1"
    width: int = 64

    def build_model(self, spec, device):
        with torch.device(device):
            return nn.Sequential(nn.Linear(self.width, self.width), nn.ReLU(), nn.Linear(self.width, 10))

    def make_optimizer(self, model, step):
        return sgd_or_adam(model, step)

    def make_batch(self, step, batch_size, device):
        return torch.empty(batch_size, self.width, device=device), torch.zeros(batch_size, dtype=torch.long, device=device)

    def loss(self, model, batch):
        x, y = batch
        return nn.functional.cross_entropy(model(x), y)


def mlp_step(precision="fp32", optimizer="sgd"):
    return StepSpec(ModelSpec("mlp", "none", Fidelity(1, 32)), precision=precision, optimizer=optimizer)


def vision_step(policy="none", precision="fp32", optimizer="sgd", sr=64):
    return StepSpec(ModelSpec("resnet18", "none", Fidelity(1, sr), policy), precision=precision, optimizer=optimizer)


def replayed(trace, accumulation=1, kind="cuda"):
    return replay(*steady_state(trace, accumulation).lists(), kind=kind)


def allocated(trace, category):
    return int(trace.sizes[(trace.ops == ALLOC) & (trace.categories == category)].sum())


@pytest.fixture(scope="module")
def vision():
    return Tracer(TorchvisionWorkload())


def test_parameter_gradient_and_optimizer_bytes_are_exact():
    width = 64
    param_bytes = 4 * (width * width + width + width * 10 + 10)
    trace = Tracer(MlpWorkload(width=width)).trace(mlp_step(optimizer="adam"), 8)
    assert allocated(trace, PARAMETER) == param_bytes
    assert allocated(trace, GRADIENT) == param_bytes
    assert sum(trace.grad_bytes) == param_bytes
    # Adam: exp_avg and exp_avg_sq per parameter, plus a 4-byte step counter each.
    assert allocated(trace, OPTIMIZER_STATE) == 2 * param_bytes + 4 * 4
    assert allocated(trace, INPUT) == 8 * width * 4 + 8 * 8


def test_phases_marks_and_flops():
    trace = Tracer(MlpWorkload()).trace(mlp_step(), 4)
    assert [m for m, _ in trace.marks] == ["data", "forward", "backward", "optimizer", "end"]
    # forward: 2 matmuls (4x64x64, 4x64x10), 2 FLOPs per multiply-add
    assert trace.phase_flops("forward") == 2 * 4 * 64 * (64 + 10)
    # backward: both weight gradients and the second layer's input gradient (the input
    # itself needs none)
    assert trace.phase_flops("backward") == 2 * 4 * 64 * 64 + 2 * 4 * 64 * 10 + 2 * 4 * 10 * 64


def test_meta_and_fake_modes_trace_the_same_events(vision):
    step = vision_step(sr=32)
    meta = vision.trace(step, 2)
    fake = Tracer(TorchvisionWorkload(), mode="fake").trace(step, 2)
    assert meta.same_structure(fake)
    assert np.array_equal(meta.sizes, fake.sizes)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_memoized_meta_kernels_change_nothing(vision, monkeypatch, optimizer):
    """Traces with memoized kernels equal plain ones, the second cached run (every
    kernel a hit where it can be) included; the optimizers' foreach kernels (returns
    `Tensor[]`, printed List[Tensor]) are among the hits."""
    from planner.tracing.meta_kernels import META_KERNELS

    step = vision_step("block", "fp16", optimizer=optimizer, sr=32)
    model = vision._model_for(step.model, META)
    first = run_step(vision.workload, step, 2, model, META)
    counted = []
    original_call = type(META_KERNELS).__call__

    def counting(self, func, args, kwargs):
        hits = self.hits
        out = original_call(self, func, args, kwargs)
        counted.append((func._overloadpacket.__name__, self.hits > hits))
        return out

    monkeypatch.setattr(type(META_KERNELS), "__call__", counting)
    again = run_step(vision.workload, step, 2, model, META)
    foreach = [hit for name, hit in counted if name.startswith("_foreach_") and not name.endswith("_")]
    assert foreach and all(foreach)  # every functional foreach kernel of the step is reused
    original = trace_module.Recorder.__init__
    monkeypatch.setattr(trace_module.Recorder, "__init__", lambda self, **kw: original(self, **{**kw, "cache": False}))
    plain = run_step(vision.workload, step, 2, model, META)
    for cached in (first, again):
        assert cached.same_structure(plain) and np.array_equal(cached.sizes, plain.sizes)
        assert cached.total_flops == plain.total_flops


def test_allocated_peak_agrees_with_memtracker_in_fake_mode():
    """PyTorch's own MemTracker on the same step under FakeTensorMode (plain sizes, no
    caching-allocator rounding on fake CPU tensors): within 2%."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    workload = TorchvisionWorkload()
    step = vision_step(sr=224)  # activations dominate: the peak is in backward
    with FakeTensorMode():
        model = workload.build_model(step.model, torch.device("cpu"))
        optimizer = workload.make_optimizer(model, step)
        tracker = MemTracker()
        tracker.track_external(model, optimizer)
        with tracker:
            batch = workload.make_batch(step, 8, torch.device("cpu"))
            workload.loss(model, batch).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        theirs = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    trace = Tracer(workload, mode="fake").trace(step, 8)
    ours = replay(trace.ops.tolist(), trace.ids.tolist(), trace.sizes.tolist(), trace.categories.tolist(), kind="plain")
    assert ours.allocated_peak == pytest.approx(theirs, rel=0.02)
    # MemTracker, a dispatch mode itself, sees autograd add gradients out of place; the
    # recorder redoes the in-place additions the engine makes without a mode.
    assert ours.allocated_peak <= theirs


@pytest.mark.parametrize("policy", ["none", "chunk:2"])
def test_packed_small_pool_matches_the_exact_replay(vision, policy):
    events = steady_state(vision.trace(vision_step(policy, "fp16", optimizer="adam"), 4), 2)
    arrays = (events.ops, events.ids, events.sizes, events.categories)
    exact, packed = replay(*arrays), replay(*arrays, small_pool="packed")
    assert packed.allocated_peak == exact.allocated_peak
    assert packed.peak_by_category == exact.peak_by_category
    assert abs(packed.reserved_peak - exact.reserved_peak) <= 4 * 2**20  # a few 2 MiB segments


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("accumulation", [1, 3])
def test_steady_state_synthesis_matches_traced_steps(vision, optimizer, accumulation):
    step = vision_step("none", "fp16", optimizer, sr=32)
    model = vision._model_for(step.model, META)
    one = run_step(vision.workload, step, 2, model, META)
    two = run_step(vision.workload, step, 2, model, META, steps=2, accumulation=accumulation)
    ours, direct = replayed(one, accumulation), replay(two.ops.tolist(), two.ids.tolist(), two.sizes.tolist(), two.categories.tolist())
    assert ours.allocated_peak == direct.allocated_peak
    assert ours.reserved_peak == direct.reserved_peak
    assert ours.peak_by_category == direct.peak_by_category


@pytest.mark.parametrize("policy", ["none", "block"])
def test_batch_extrapolation_matches_a_direct_trace(vision, policy):
    step = vision_step(policy, "fp16", sr=64)
    first, second, direct = vision.trace(step, 2), vision.trace(step, 3), vision.trace(step, 6)
    guess = extrapolate(first, second, 6)
    a, b = replayed(guess, 2), replayed(direct, 2)
    assert a.allocated_peak == pytest.approx(b.allocated_peak, rel=0.01)
    assert a.reserved_peak == pytest.approx(b.reserved_peak, rel=0.01)
    assert guess.total_flops == pytest.approx(direct.total_flops, rel=1e-9)


def test_extrapolation_refuses_different_structures(vision):
    # chunk:2 runs more chunks at batch 3 than at batch 2: not the same ops.
    step = vision_step("chunk:2", sr=64)
    with pytest.raises(StructureMismatch):
        extrapolate(vision.trace(step, 2), vision.trace(step, 3), 8)


def test_checkpointing_reduces_activation_memory(vision):
    peaks = {p: replayed(vision.trace(vision_step(p, sr=224), 16)) for p in ("none", "block", "chunk:2")}
    acts = {p: r.peak_by_category[ACTIVATION] for p, r in peaks.items()}
    assert acts["block"] < 0.8 * acts["none"] and acts["chunk:2"] < acts["none"] / 4
    flops = {p: vision.trace(vision_step(p, sr=224), 16).total_flops for p in peaks}
    assert flops["block"] > flops["none"]  # recomputation is counted


def test_fp16_outputs_half_and_weight_copies_counted():
    conv = StepSpec(ModelSpec("resnet18", "none", Fidelity(1, 32)), precision="fp16")
    workload = TorchvisionWorkload()
    model = workload.build_model(conv.model, META)
    trace = run_step(workload, conv, 2, model, META)
    fp32_trace = run_step(workload, StepSpec(conv.model), 2, model, META)
    weight = model.conv1.weight
    forward = slice(trace.mark("forward"), trace.mark("backward"))
    cast_copy = weight.numel() * 2
    assert cast_copy in trace.sizes[forward].tolist()  # the fp16 copy of conv1's weight
    stem = 2 * 64 * 16 * 16  # conv1 output (B, 64, 16, 16)
    assert stem * 2 in trace.sizes[forward].tolist() and stem * 4 not in trace.sizes[forward].tolist()
    assert stem * 4 in fp32_trace.sizes[slice(fp32_trace.mark("forward"), fp32_trace.mark("backward"))].tolist()


def test_emulation_bans_binary_cross_entropy():
    x = torch.rand(4, device=META)
    with CudaAutocastEmulation(torch.float16) as mode, mode.region():
        with pytest.raises(AutocastBannedError):
            nn.functional.binary_cross_entropy(x, x)


CASES = [
    ("linear", lambda x, w, h: nn.functional.linear(x, w)),
    ("matmul", lambda x, w, h: x @ w),
    ("conv", lambda x, w, h: nn.functional.conv1d(x.unsqueeze(0), w.unsqueeze(-1))),
    ("softmax", lambda x, w, h: torch.softmax(h, -1)),
    ("sum", lambda x, w, h: h.sum()),
    ("exp", lambda x, w, h: h.exp()),
    ("pow", lambda x, w, h: h**2),
    ("layer_norm", lambda x, w, h: nn.functional.layer_norm(h, h.shape[-1:])),
    ("mse", lambda x, w, h: nn.functional.mse_loss(h, h)),
    ("sigmoid", lambda x, w, h: torch.sigmoid(h)),
    ("relu", lambda x, w, h: torch.relu(h)),
    ("mixed add", lambda x, w, h: h + x),
    ("addcmul", lambda x, w, h: torch.addcmul(x, h, h)),
    ("bmm", lambda x, w, h: torch.bmm(x.unsqueeze(0), w.unsqueeze(0))),
    ("logsumexp", lambda x, w, h: torch.logsumexp(h, -1)),
    ("cross_entropy", lambda x, w, h: nn.functional.cross_entropy(h, torch.zeros(8, dtype=torch.long, device=h.device))),
]


@pytest.mark.parametrize(("name", "fn"), CASES, ids=[c[0] for c in CASES])
def test_emulation_matches_real_cuda_autocast(name, fn):
    """The real AutocastCUDA kernels run on fake CUDA tensors (forward only) once
    autocast is switched on below the Python check that disables it without CUDA."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    def tensors(device):
        return (torch.rand(8, 8, device=device), torch.rand(8, 8, device=device),
                torch.rand(8, 8, device=device, dtype=torch.float16))

    with FakeTensorMode(allow_non_fake_inputs=False):
        torch.set_autocast_enabled("cuda", True)
        torch.set_autocast_dtype("cuda", torch.float16)
        try:
            real = fn(*tensors("cuda")).dtype
        finally:
            torch.set_autocast_enabled("cuda", False)
            torch.clear_autocast_cache()
    with CudaAutocastEmulation(torch.float16) as mode, mode.region():
        emulated = fn(*tensors(META)).dtype
    assert emulated == real


def test_policy_tables_name_real_autocast_cuda_ops():
    """Every aten op of the tables has an AutocastCUDA kernel in the installed torch."""
    for name in ("conv2d", "linear", "matmul", "bmm", "softmax.int", "sum", "exp", "mse_loss", "layer_norm",
                 "binary_cross_entropy", "addcmul"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{name}", "AutocastCUDA"), name
        assert policy_of(name.split(".")[0]) is not None
    for name in ("relu", "sigmoid", "cat", "batch_norm"):
        assert not torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{name}", "AutocastCUDA")
        assert policy_of(name) is None


def test_in_place_gradient_accumulation_is_emulated():
    """A leaf used twice: the engine adds its two gradients in place (no third buffer)
    even though a dispatch mode would make it allocate one."""
    leaf = nn.Parameter(torch.empty(1000, device=META))
    recorder = trace_module.Recorder(exclusive=tracer_module.exclusive_use_counts(META))
    with recorder:
        recorder.adopt([leaf], PARAMETER)
        loss = (leaf * 2).sum() + (leaf * 3).sum()
        recorder.mark("backward")
        tracer_module._backward(loss)
    trace = recorder.close(batch_size=1, grad_bytes=(), carry=())
    backward = slice(trace.mark("backward"), len(trace))
    assert (trace.sizes[backward] == 4000).sum() == 2
