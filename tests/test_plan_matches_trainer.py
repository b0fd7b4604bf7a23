"""What the planner estimates is what the trainer trains: the trainer's own LoFi-stage
step (lofi.train.lofi_stage, lofi.train.loop: its model builder, optimizer, micro-step
and update), run for two optimizer steps on real CPU tensors under the planner's
recorder, allocates the peak the planner estimates for the same candidate within 1 %.

Without gradient accumulation: under any dispatch mode autograd's AccumulateGrad adds a
second micro-batch's gradient out of place (`at::isTensorSubclassLike` is true for every
tensor then), which a real run does in place, as the planner models it
(planner.tracing.synthesis); recorded, the trainer would show one gradient too many."""

from __future__ import annotations

import pytest
import torch

from lofi.data.dataset import ClipBatch
from lofi.models.lofi_model import PLAN_BN_MODES, build_lofi_model
from lofi.plan_workload import lofi_workload
from lofi.train.config import OptimConfig
from lofi.train.lofi_stage import _micro_step
from lofi.train.loop import grad_scaler, make_optimizer
from planner.cost.replay import replay
from planner.candidate import Candidate
from planner.estimate import estimate_candidate
from planner.fidelity import Fidelity
from planner.hardware.profiles import get_profile
from planner.tracing.recorder import PARAMETER, Recorder
from planner.tracing.cache import TraceCache
from planner.tracing.step import _exclusive
from train_helpers import tiny_config

FIDELITY = Fidelity(4, 32, 2)  # TR 4 (the head's smallest T), 32 px, 2 frames per snippet


class _Paths:
    annotations = videos_dir = classification = "unused"


def _batch(batch_size: int, step: int) -> ClipBatch:
    f = FIDELITY
    clips = torch.randint(0, 256, (batch_size, f.tr, f.frames_per_snippet, 3, f.sr, f.sr), dtype=torch.uint8)
    return ClipBatch(
        video_ids=[f"v{step}_{i}" for i in range(batch_size)],
        clips=clips,  # (B, TR, F, 3, SR, SR)
        durations=torch.full((batch_size,), 10.0, dtype=torch.float64),
        segments=[torch.tensor([[1.0, 6.0]]) for _ in range(batch_size)],
        labels=[torch.tensor([0]) for _ in range(batch_size)],
        skipped=[],
        fidelity=f,
    )


def _trainer_allocated_peak(candidate: Candidate, recipe: OptimConfig) -> int:
    """Two optimizer steps of the trainer's LoFi stage, recorded; the host allocator's peak."""
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = build_lofi_model(candidate.backbone, candidate.head, [f.tr for f in candidate.fidelities],
                             bn_mode=PLAN_BN_MODES[candidate.batchnorm], checkpointing=candidate.checkpointing,
                             device=device)
    config = tiny_config(_Paths)
    recorder = Recorder(compress=False, cache=False, exclusive=_exclusive(device))
    with recorder:
        recorder.adopt(model.parameters(), PARAMETER)
        recorder.adopt(model.buffers(), PARAMETER)
        optimizer = make_optimizer(model.parameters(), recipe)
        scaler = grad_scaler(device, candidate.precision)
        batch = None
        for step in range(2):
            for _ in range(candidate.accumulation):
                batch = _batch(candidate.batch_per_gpu, step)
                _micro_step(model, batch, candidate, config, scaler, step)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        trace = recorder.close(batch_size=candidate.batch_per_gpu, grad_bytes=(), carry=())
    del batch, optimizer
    return replay(trace.ops, trace.ids, trace.sizes, trace.categories, kind="plain").allocated_peak


@pytest.mark.parametrize(
    ("optimizer", "recipe", "batchnorm", "checkpointing"),
    [
        ("adam", OptimConfig("adam", lr=1e-3, epochs=1), "trained", "none"),
        ("sgd_momentum", OptimConfig("sgd", lr=0.1, epochs=1, momentum=0.9), "frozen", "block"),
        ("sgd", OptimConfig("sgd", lr=0.1, epochs=1), "partial", "none"),
    ],
)
def test_trainer_step_allocates_the_planned_peak(optimizer, recipe, batchnorm, checkpointing):
    candidate = Candidate(backbone="tsm_r18", head="gtad", batch_per_gpu=2, fidelity=FIDELITY,
                          optimizer=optimizer, batchnorm=batchnorm, checkpointing=checkpointing)
    planned = estimate_candidate(candidate, lofi_workload(), get_profile("cpu"), videos_per_epoch=9649,
                                 cache=TraceCache.in_memory())
    measured = _trainer_allocated_peak(candidate, recipe)
    assert measured == pytest.approx(planned.memory.allocated_peak, rel=0.01)
