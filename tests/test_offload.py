"""Activation offload and head checkpointing as the planner sees them: traces on meta
tensors against `none` and against the real `save_on_cpu` on real tensors, the estimate's
transfer time and pinned host memory, the host link of a profile, plan.json, the choice."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from lofi.models.lofi_model import build_lofi_model
from lofi.plan_workload import LofiWorkload
from planner.cost.allocator import ALLOC
from planner.candidate import Candidate
from planner.axes import WorkloadAxes
from planner.choose import rank_candidates
from planner.errors import ProfileError
from planner.estimate import estimate_grid, pinned_block
from planner.fidelity import Fidelity
from planner.hardware.host_links import host_link
from planner.plan_file import plan_from_dict, plan_to_dict
from planner.hardware.profiles import get_profile, gpus_dir, profile_from_dict
from planner.tracing.synthesis import extrapolate
from planner.tracing.recorder import PARAMETER
from planner.tracing.cache import TraceCache
from planner.tracing.step import Tracer
from planner.workload import ModelSpec, StepSpec
from plan_helpers import make_plan

TINY = Fidelity(8, 32, 2)  # TR=8 snippets of 2 frames at 32x32
HEADY = Fidelity(24, 32, 2)  # T = 24: the head's (B, 256 * 36, T, T) map is a large part of the step
V100 = get_profile("v100-32gb")


def step(policy="none", fidelity=TINY, precision="fp32"):
    return StepSpec(ModelSpec("tsm_r18", "gtad", fidelity, policy), precision=precision)


@pytest.fixture(scope="module")
def tracer():
    return Tracer(LofiWorkload())


def live_bytes(trace, before: int, skip=(PARAMETER,)) -> int:
    """Bytes of blocks alive just before event `before`, categories in `skip` left out."""
    sizes = np.where(trace.ops == ALLOC, trace.sizes, 0)
    size_of, live = {}, 0
    for i in range(before):
        block = int(trace.ids[i])
        if trace.ops[i] == ALLOC:
            size_of[block] = (int(sizes[i]), int(trace.categories[i]))
            live += size_of[block][0] if size_of[block][1] not in skip else 0
        else:
            size, category = size_of.pop(block)
            live -= size if category not in skip else 0
    return live


def peak(trace) -> int:
    return max(live_bytes(trace, i, skip=()) for i in (trace.mark("backward"), len(trace)))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_offloaded_activations_leave_the_device_trace(tracer, precision):
    none, offload = tracer.trace(step("none", precision=precision), 2), tracer.trace(step("offload", precision=precision), 2)
    assert not none.host_sizes and offload.host_sizes
    assert offload.total_flops == pytest.approx(none.total_flops, rel=1e-12)  # nothing recomputed
    block = tracer.trace(step("block", precision=precision), 2)
    at_none, at_block, at_offload = (live_bytes(t, t.mark("backward")) for t in (none, block, offload))
    moved = at_none - at_offload  # activations no longer on the device when backward starts
    # block checkpointing keeps each block's input on the device; offload keeps none of them
    assert at_offload < at_block < at_none
    # what left the device is on the host; the host holds more: tensors saved twice and
    # the weights convolutions save are copied too
    assert moved <= offload.host_bytes


def test_traced_offload_is_what_save_on_cpu_packs_on_real_tensors(tracer):
    traced = tracer.trace(step("offload"), 2)
    torch.manual_seed(0)
    model = build_lofi_model("tsm_r18", "gtad", [TINY.tr], checkpointing="offload")
    packed = []

    class Counting(torch.autograd.graph.save_on_cpu):
        def __init__(self):
            super().__init__(pin_memory=True)
            pack = self.pack_hook
            self.pack_hook = lambda t: (packed.append(t.numel() * t.element_size()), pack(t))[1]

    model.encoder.offload_context = Counting
    workload = LofiWorkload()
    batch = workload.make_batch(step("offload"), 2, torch.device("cpu"))
    workload.loss(model, batch).backward()
    assert len(packed) == len(traced.host_sizes)  # the same saved tensors, in the same order
    differ = [(real, meta) for real, meta in zip(packed, traced.host_sizes) if real != meta]
    # only frozen BN's batch statistics: the CPU kernel saves them empty in eval mode, the
    # meta kernel as C floats
    assert all(real == 0 and meta <= 2048 * 4 for real, meta in differ)
    assert sum(packed) == pytest.approx(traced.host_bytes, rel=1e-3)
    assert all(p.grad is not None for p in model.encoder.parameters() if p.requires_grad)


def test_offload_sizes_extrapolate_in_the_batch(tracer):
    s = step("offload", precision="fp16")
    guess = extrapolate(tracer.trace(s, 2), tracer.trace(s, 3), 5)
    assert guess.host_sizes == tracer.trace(s, 5).host_sizes


def test_head_checkpointing_lowers_the_peak_and_extrapolates(tracer):
    none, head = (tracer.trace(step(p, HEADY), 2) for p in ("none", "none+head"))
    assert head.total_flops > none.total_flops  # the map is computed again in backward
    assert peak(head) < 0.9 * peak(none)
    third = tracer.trace(step("none+head", HEADY), 3)
    assert extrapolate(head, third, 4).same_structure(tracer.trace(step("none+head", HEADY), 4))


def test_estimate_adds_transfer_time_and_pinned_host_memory():
    candidates = [Candidate("tsm_r18", "gtad", 2, fidelity=TINY, accumulation=8, checkpointing=p)
                  for p in ("none", "offload")]
    none, offload = estimate_grid(candidates, LofiWorkload(), V100, videos_per_epoch=9649, cache=TraceCache.in_memory(), workers=1)
    traced = Tracer(LofiWorkload()).trace(step("offload").canonical(), 2)
    assert offload.memory.activations < none.memory.activations
    assert offload.memory.host_pinned == sum(pinned_block(n) for n in traced.host_sizes) >= traced.host_bytes
    assert none.memory.host_pinned == 0 and none.time.host_transfer_seconds == 0
    link = host_link(V100)
    assert link.name == "pcie3-x16" and link.gbps == 15.75
    transfer = 8 * 2 * traced.host_bytes / 15.75e9  # 8 micro-batches, each way once
    assert offload.time.host_transfer_seconds == pytest.approx(transfer, rel=1e-9)
    assert offload.time.flops_per_step == pytest.approx(none.time.flops_per_step, rel=1e-12)
    assert offload.time.seconds_per_step == pytest.approx(none.time.seconds_per_step + transfer, rel=1e-9)


def test_pinned_blocks_are_powers_of_two():
    assert [pinned_block(n) for n in (0, 1, 4096, 4097, 3 << 20)] == [0, 1, 4096, 8192, 4 << 20]


def test_host_link_of_a_profile():
    assert host_link(get_profile("a100-40gb")).gbps == 31.5
    assert "PCI Express Base Specification 5.0" in host_link(get_profile("h100-80gb")).source
    document = json.loads((gpus_dir() / "v100-32gb.json").read_text())
    measured = profile_from_dict({**document, "host_link_gbps": 12.1, "host_link_source": "bandwidthTest, 2026"}, "x")
    assert host_link(measured).gbps == 12.1 and host_link(measured).source == "bandwidthTest, 2026"
    with pytest.raises(ProfileError, match="x: host_link_gbps needs a host_link_source"):
        profile_from_dict({**document, "host_link_gbps": 12.1}, "x")
    with pytest.raises(ProfileError, match="v100-32gb: host_link 'pcie9' is not one of pcie3-x16"):
        host_link(dataclasses.replace(V100, host_link="pcie9"))
    without = {k: v for k, v in document.items() if k != "host_link"}
    assert host_link(profile_from_dict(without, "x")).name == "pcie3-x16"  # the table's default


def test_plan_file_keeps_host_fields_and_reads_older_plans():
    plan = make_plan()
    entry = plan.candidates[0]
    memory = dataclasses.replace(entry.memory, host_pinned=3 << 30)
    time = dataclasses.replace(entry.time, host_transfer_seconds=0.25)
    plan = dataclasses.replace(plan, candidates=(dataclasses.replace(entry, memory=memory, time=time),
                                                 *plan.candidates[1:]))
    document = plan_to_dict(plan)
    assert plan_from_dict(document, "plan.json") == plan
    del document["candidates"][0]["estimate"]["memory"]["host_pinned"]
    del document["candidates"][0]["estimate"]["time"]["host_transfer_seconds"]
    older = plan_from_dict(document, "plan.json")
    assert older.candidates[0].memory.host_pinned == 0 and older.candidates[0].time.host_transfer_seconds == 0


def test_offload_is_chosen_only_where_nothing_faster_fits():
    policies = ("none", "block", "chunk:4", "offload")
    candidates = [Candidate("tsm_r18", "gtad", 2, fidelity=TINY, accumulation=8, precision="fp16", checkpointing=p)
                  for p in policies]
    estimates = {e.candidate.checkpointing: e for e in estimate_grid(candidates, LofiWorkload(), V100,
                                                                      videos_per_epoch=9649, cache=TraceCache.in_memory(), workers=1)}
    seconds = {p: e.time.seconds_per_step for p, e in estimates.items()}
    assert seconds["offload"] > seconds["none"]  # the same work plus the copies
    totals = sorted({e.memory.total for e in estimates.values()})
    for usable in [*totals, totals[-1] + 1]:  # budgets at which one more policy fits each time
        chosen = rank_candidates(list(estimates.values()), usable, WorkloadAxes()).chosen
        fitting = [p for p, e in estimates.items() if e.memory.total <= usable]
        assert chosen.candidate.checkpointing == min(fitting, key=seconds.get)
        if chosen.candidate.checkpointing == "offload":
            assert all(seconds[p] > seconds["offload"] for p in fitting if p != "offload")
