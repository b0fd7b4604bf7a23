"""Hand-made planner values for the planner tests: plain MemoryEstimate/TimeEstimate
dataclasses (what `planner.estimate` returns), not mocks of it."""

from __future__ import annotations

from lofi.plan_axes import LOFI_AXES
from planner.candidate import Candidate
from planner.choose import rank_candidates, usable_bytes
from planner.estimate_types import CandidateEstimate, MemoryEstimate, TimeEstimate
from lofi.fidelities import C_LOFI_CYCLE, FULL, LOW_BUDGET
from planner.plan import Plan, plan_from_ranking
from planner.hardware.profiles import get_profile

GiB = 2**30


def estimate(candidate: Candidate, gib: float, step_seconds: float = 1.0, videos: int = 9649) -> CandidateEstimate:
    total = int(gib * GiB)
    params = 45 * 2**20
    memory = MemoryEstimate(
        parameters=params, gradients=params, optimizer_state=0,
        activations=total - 2 * params - 400 * 2**20 - 300 * 2**20, workspace=300 * 2**20,
        allocator_slack=0, context=400 * 2**20,
    )
    assert memory.total == total
    steps = videos / candidate.global_batch
    return CandidateEstimate(candidate, memory, TimeEstimate(1e12, step_seconds, step_seconds * steps, videos))


def cand(fidelity=None, backbone="tsm_r18", batch=1, precision="fp32", checkpointing="none", cycle=None, gpus=1):
    accumulation = 16 // (batch * gpus)
    return Candidate(backbone, "gtad", batch, fidelity=fidelity, cycle=cycle, gpus=gpus,
                     accumulation=accumulation, precision=precision, checkpointing=checkpointing)


def make_plan(measured=None) -> Plan:
    """A plan on 1 x v100-32gb: full-fidelity R50 needs 90 GiB (does not fit), so C-LoFi
    R34 wins over the low-budget R18."""
    v100 = get_profile("v100-32gb")
    estimates = [
        estimate(cand(cycle=C_LOFI_CYCLE, backbone="tsm_r34", batch=2, checkpointing="chunk:4", precision="fp16"), 20.0, 9.0),
        estimate(cand(FULL, "tsm_r50"), 90.0),
        estimate(cand(LOW_BUDGET, batch=16), 12.0, 3.0),
    ]
    ranking = rank_candidates(estimates, usable_bytes(v100, 0.1), LOFI_AXES)
    return plan_from_ranking(
        ranking, v100, margin=0.1, global_batch=16, videos_per_epoch=9649,
        dataset="ActivityNet-1.3 training (default)", notices=("no GPU here: planned for v100-32gb",),
        measured=measured,
    )
