"""The LoFi workload traced at tiny shapes: chunked checkpointing traced with skipped
chunks equals the full trace, batch extrapolation, autocast against the real
AutocastCUDA kernels, and the memory side of the checkpointing target."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lofi.plan_workload import LofiWorkload
from planner.cost.replay import replay
from planner.tracing.autocast import CudaAutocastEmulation
from lofi.fidelities import T_LOFI
from planner.fidelity import Fidelity
from planner.tracing.synthesis import expand_periods, extrapolate, steady_state
from planner.tracing.recorder import ACTIVATION, INPUT
from planner.tracing.step import Tracer
from planner.workload import ModelSpec, StepSpec

TINY = Fidelity(8, 32, 2)  # TR=8 snippets of 2 frames at 32x32


def step(policy="none", precision="fp32", head="gtad", fidelity=TINY, optimizer="sgd"):
    return StepSpec(ModelSpec("tsm_r18", head, fidelity, policy), precision=precision, optimizer=optimizer)


def replayed(trace, accumulation=1):
    return replay(*steady_state(expand_periods(trace), accumulation).lists())


@pytest.fixture(scope="module")
def tracers():
    workload = LofiWorkload()
    return Tracer(workload), Tracer(workload, compress=False)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_skipped_chunks_are_synthesized_exactly(tracers, precision):
    compressed, full = tracers
    s = step("chunk:2", precision, optimizer="adam")
    short, long_ = compressed.trace(s, 2), full.trace(s, 2)
    assert short.repeats == 5 and len(short) < 0.6 * len(long_)  # 3 of 8 chunks traced
    expanded = expand_periods(short)
    assert expanded.total_flops == pytest.approx(long_.total_flops, rel=1e-12)
    for accumulation in (1, 2):
        ours, truth = replayed(short, accumulation), replayed(long_, accumulation)
        assert ours.allocated_peak == truth.allocated_peak
        assert ours.peak_by_category == truth.peak_by_category
        assert ours.reserved_peak == pytest.approx(truth.reserved_peak, rel=0.01)


@pytest.mark.parametrize("policy", ["none", "chunk:2"])
def test_batch_extrapolation_within_one_percent(tracers, policy):
    tracer = tracers[0]
    s = step(policy, "fp16")
    guess = extrapolate(tracer.trace(s, 2), tracer.trace(s, 3), 5)
    direct = tracer.trace(s, 5)
    a, b = replayed(guess, 2), replayed(direct, 2)
    assert a.allocated_peak == pytest.approx(b.allocated_peak, rel=0.01)
    assert a.reserved_peak == pytest.approx(b.reserved_peak, rel=0.01)
    assert expand_periods(guess).total_flops == pytest.approx(expand_periods(direct).total_flops, rel=1e-9)


def test_bmn_head_traces(tracers):
    trace = tracers[0].trace(step(head="bmn"), 2)
    assert trace.total_flops > 0 and replayed(trace).allocated_peak > 0


def test_batch_is_counted_as_input(tracers):
    from planner.cost.allocator import ALLOC

    trace = tracers[0].trace(step(), 2)
    inputs = int(trace.sizes[(trace.ops == ALLOC) & (trace.categories == INPUT)].sum())
    t, f, sr = TINY.tr, TINY.frames_per_snippet, TINY.sr
    clips, targets, mask = 2 * t * f * 3 * sr * sr, 4 * (2 * t + 2 * t + 2 * t * t), t * t
    assert inputs == clips + targets + mask


def test_chunk_runner_is_the_encoder_forward_outside_tracing():
    workload = LofiWorkload()
    model = workload.build_model(step("chunk:3").model, torch.device("cpu")).eval()
    clips = torch.randint(0, 255, (1, 8, 2, 3, 32, 32), dtype=torch.uint8)
    encoder = model.encoder
    with torch.no_grad():
        assert torch.equal(encoder(clips), type(encoder).forward(encoder, clips))


def _dtypes_of_forward(device, autocast):
    """(op, output dtypes) of LoFi's forward + loss, in order."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Log(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            outs = out if isinstance(out, (tuple, list)) else (out,)
            dtypes = tuple(str(o.dtype) for o in outs if isinstance(o, torch.Tensor))
            if not str(func).startswith(("aten._to_copy", "prim.", "aten.detach", "aten.lift_fresh")):
                self.seen.append((str(func), dtypes))
            return out

    workload = LofiWorkload()
    s = step("none", "fp16")
    model = workload.build_model(s.model, device)
    batch = workload.make_batch(s, 1, device)
    log = Log()
    with torch.no_grad(), autocast(), log:
        workload.loss(model, batch)
    return log.seen


def test_autocast_emulation_matches_cuda_autocast_on_the_lofi_forward():
    from contextlib import contextmanager

    from torch._subclasses.fake_tensor import FakeTensorMode

    @contextmanager
    def real_cuda_autocast():
        torch.set_autocast_enabled("cuda", True)
        torch.set_autocast_dtype("cuda", torch.float16)
        try:
            yield
        finally:
            torch.set_autocast_enabled("cuda", False)
            torch.clear_autocast_cache()

    @contextmanager
    def emulated():
        with CudaAutocastEmulation(torch.float16) as mode, mode.region():
            yield

    def same_kernels(seen):
        # Frozen BatchNorm runs cudnn_batch_norm on CUDA, native_batch_norm (after an empty
        # reserve) elsewhere: compare only its output dtype.
        return [("batch_norm", dtypes[:1]) if "batch_norm" in op else (op, dtypes) for op, dtypes in seen
                if (op, dtypes) != ("aten.empty.memory_format", ("torch.uint8",))]

    with FakeTensorMode():
        real = same_kernels(_dtypes_of_forward(torch.device("cuda"), real_cuda_autocast))
    ours = same_kernels(_dtypes_of_forward(torch.device("meta"), emulated))
    assert len(real) > 100 and ours == real


def test_chunk_cuts_encoder_activations_at_least_fourfold(tracers):
    """The checkpointing benchmark's memory target (tsm_r18 + G-TAD, T-LoFi 25/224,
    batch 1): chunk:4 keeps at least 4x less activation memory than none."""
    tracer = tracers[0]
    peaks = {p: replayed(tracer.trace(step(p, fidelity=T_LOFI), 1)) for p in ("none", "chunk:4")}
    acts = {p: r.peak_by_category[ACTIVATION] + r.peak_by_category[INPUT] for p, r in peaks.items()}
    assert acts["none"] >= 4 * acts["chunk:4"]
    assert np.isfinite(acts["none"])


def test_a_cycle_member_is_its_single_fidelity_trace_plus_the_other_members_state(tracers):
    """A C-LoFi member's model holds the head's sampling matrices of every member: the
    planner traces the single-fidelity model and adds those buffers at setup; the
    model built with the whole cycle, traced directly, allocates the same."""
    from planner.trace_store import TraceStore
    from planner.tracing.cache import TraceCache

    cycle = (TINY, Fidelity(16, 32, 2))
    member = StepSpec(ModelSpec("tsm_r18", "gtad", TINY, "none", cycle=cycle))
    store = TraceStore(LofiWorkload(), TraceCache.in_memory())
    extra = store.extra_state(member.model)
    assert len(extra) >= 1 and sum(extra) > 0  # the T = 16 sampling matrices
    planned = replayed(store.at_batch(member, 3))
    direct = replayed(tracers[1].trace(member, 3))
    single = replayed(tracers[1].trace(step(), 3))
    assert planned.allocated_peak == pytest.approx(direct.allocated_peak, rel=0.01)
    assert planned.allocated_peak >= single.allocated_peak + sum(extra) - 2**20


def test_the_workload_key_covers_every_model_source():
    """A change to any module that defines the traced step (the heads' subpackage too)
    makes a new workload key, so no stale trace is reused."""
    import lofi
    from lofi.plan_workload import source_files

    root = Path(lofi.__file__).resolve().parent
    names = {path.relative_to(root).as_posix() for path in source_files()}
    assert {"models/encoders.py", "models/heads/gtad.py", "models/heads/bmn.py", "models/heads/sampling.py",
            "models/heads/output.py", "models/heads/__init__.py", "plan_workload.py"} <= names
