"""planner.search: the smallest fitting blocks:N, checked against every N estimated, on
the torchvision reference workload (ResNet-50: 16 blocks)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from planner.axes import WorkloadAxes
from planner.candidate import Candidate
from planner.choose import rank_candidates, usable_bytes
from planner.estimate import estimate_grid
from planner.fidelity import Fidelity
from planner.hardware.gpu_profile import GpuProfile
from planner.search import search_blocks, search_offload
from planner.tracing.cache import TraceCache
from planner.workload import ModelSpec, TorchvisionWorkload

GiB = 1 << 30
BIG = GpuProfile(name="test-v100", display_name="test V100", memory_bytes=32 * GiB, fp32_tflops=15.7,
                 fp16_tflops=125.0, bf16_tflops=None, bandwidth_gbps=900.0, source="test")


def _candidate(policy: str, batch: int = 32) -> Candidate:
    return Candidate(backbone="resnet50", head="none", batch_per_gpu=batch, fidelity=Fidelity(1, 224),
                     checkpointing=policy)


@pytest.fixture(scope="module")
def setting():
    """A profile whose usable memory falls between `none` and `block` for ResNet-50 at
    batch 32, 224 x 224, and every policy estimated on it (brute force)."""
    workload, cache = TorchvisionWorkload(), TraceCache.in_memory()
    count = len(workload.checkpoint_order("resnet50"))
    assert len(workload.block_savings(ModelSpec("resnet50", "none", Fidelity(1, 224)))) == count
    policies = ["none", *(f"blocks:{n}" for n in range(1, count + 1)), "block"]

    def everything(profile):
        found = estimate_grid([_candidate(p) for p in policies], workload, profile, videos_per_epoch=1000, cache=cache,
                              workers=1)
        return {e.candidate.checkpointing: e for e in found}

    roomy = everything(BIG)
    between = (roomy["blocks:3"].memory.total + roomy["blocks:4"].memory.total) // 2
    profile = dataclasses.replace(BIG, memory_bytes=math.ceil(between / 0.9))
    return workload, cache, profile, everything(profile), count


def test_memory_does_not_grow_with_n(setting):
    _, _, _, brute, count = setting
    totals = [brute[f"blocks:{n}"].memory.total for n in range(1, count + 1)]
    assert all(later <= earlier for earlier, later in zip(totals, totals[1:]))
    assert brute["none"].memory.total > totals[0] or brute["none"].memory.total == totals[0]
    assert brute[f"blocks:{count}"].memory.total == brute["block"].memory.total  # every block: block
    seconds = [brute[f"blocks:{n}"].time.seconds_per_step for n in range(1, count + 1)]
    assert seconds == sorted(seconds) and seconds[0] > brute["none"].time.seconds_per_step


def test_search_finds_the_smallest_fitting_n(setting):
    workload, cache, profile, brute, count = setting
    usable = usable_bytes(profile)
    smallest = min(n for n in range(1, count + 1) if brute[f"blocks:{n}"].memory.total <= usable)
    assert 1 < smallest < count and brute["none"].memory.total > usable  # the case is interior
    asked: list[list[str]] = []

    def estimate(candidates):
        asked.append([c.checkpointing for c in candidates])
        return estimate_grid(candidates, workload, profile, videos_per_epoch=1000, cache=cache, workers=1)

    grid = [brute["none"], brute["block"]]
    found = search_blocks(grid, workload, usable, estimate)
    assert len(asked) <= 2 + math.ceil(math.log2(count)) and all(len(round_) == 1 for round_ in asked)
    assert len(found) == len(asked)  # one probe per round
    fitting = [e for e in found if e.memory.total <= usable]
    assert min(e.candidate.policy.size for e in fitting) == smallest
    assert f"blocks:{smallest - 1}" in {e.candidate.checkpointing for e in found}  # its neighbour was tried
    # and the ranking chooses it: the fastest that fits (less recomputation than block)
    ranking = rank_candidates([*grid, *found], usable, WorkloadAxes())
    assert ranking.chosen is not None and ranking.chosen.candidate.checkpointing == f"blocks:{smallest}"
    assert len(ranking.ranked) == 2 + len(found)  # every estimated policy is kept


def test_no_search_where_none_fits_or_block_does_not(setting):
    workload, _, _, brute, _ = setting
    grid = [brute["none"], brute["block"]]

    def refuse(candidates):
        raise AssertionError(f"nothing to search, asked for {candidates}")

    assert search_blocks(grid, workload, brute["none"].memory.total, refuse) == []  # none fits
    assert search_blocks(grid, workload, brute["block"].memory.total - 1, refuse) == []  # block does not
    assert search_blocks(grid, object(), 0, refuse) == []  # a workload without blocks


class _Savings:
    """A workload as the search sees it: only each block's saved bytes."""

    def __init__(self, savings):
        self.savings = tuple(savings)

    def block_savings(self, spec):
        return self.savings


@pytest.mark.parametrize("savings", [(8, 8, 4, 4, 2, 2, 1, 1), (1,) * 16, (30, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)])
def test_search_logic_finds_the_smallest_n_for_every_budget(savings):
    """Memory falling with N as the savings say, but not exactly (a bump the prediction
    cannot see): for every budget between none and block, brute force agrees."""
    from plan_helpers import estimate as make_estimate

    count = len(savings)
    base = Candidate(backbone="tsm_r50", head="gtad", batch_per_gpu=1, fidelity=Fidelity(25, 112))

    def gib(n: int) -> float:  # none: 10 GiB; block: 2 GiB; a flat stretch in the middle
        saved = sum(savings[:n]) / sum(savings)
        return 10.0 - 8.0 * (saved if n < count // 2 or n > count // 2 + 1 else sum(savings[:count // 2]) / sum(savings))

    def estimate(candidates):
        return [make_estimate(c, gib(c.policy.size)) for c in candidates]

    grid = [make_estimate(base, gib(0)), make_estimate(dataclasses.replace(base, checkpointing="block"), gib(count))]
    for budget in [2.0 + 8.0 * k / 40 for k in range(40)]:
        usable = int(budget * GiB)
        fitting = [n for n in range(1, count + 1) if int(gib(n) * GiB) <= usable]
        found = search_blocks(grid, _Savings(savings), usable, estimate)
        fits = [e.candidate.policy.size for e in found if e.memory.total <= usable]
        if min(fitting) == count:
            assert not fits  # only every block fits: nothing partial to find
        else:
            assert min(fits) == min(fitting), budget


class _Offloads:
    offloads = True


def test_offload_is_probed_only_where_none_does_not_fit_and_it_could_be_fastest():
    from plan_helpers import estimate as make_estimate
    from planner.hardware.host_links import HostLink

    small = Candidate(backbone="tsm_r18", head="gtad", batch_per_gpu=1, fidelity=Fidelity(25, 112))
    large, huge = dataclasses.replace(small, batch_per_gpu=4), dataclasses.replace(small, batch_per_gpu=8)
    link = HostLink("test", 1.0, "test")  # 1 GB/s: 2 GiB over budget cost ~4.3 s a micro-batch, both ways
    grid = [make_estimate(small, 4.0), make_estimate(dataclasses.replace(small, checkpointing="block"), 2.0),
            # none misses by 2 GiB; block fits and takes 2 s, none 1 s: offload needs >= 1 + 4.3 s: skipped
            make_estimate(large, 10.0), make_estimate(dataclasses.replace(large, checkpointing="block"), 6.0, 2.0),
            # none misses by 2 GiB; block fits but takes 10 s: offload may be faster: probed
            make_estimate(huge, 10.0), make_estimate(dataclasses.replace(huge, checkpointing="block"), 6.0, 10.0)]
    asked = []

    def estimate(candidates):
        asked.extend(candidates)
        return [make_estimate(c, 3.0) for c in candidates]

    usable = 8 * GiB
    found = search_offload(grid, _Offloads(), usable, estimate, link=link)
    assert [e.candidate for e in found] == [dataclasses.replace(huge, checkpointing="offload")]
    assert search_offload(grid + found, _Offloads(), usable, estimate, link=link) == []  # estimated already
    assert search_offload(grid, _Offloads(), usable, estimate, link=None) == []  # the cpu profile: no link
    assert search_offload(grid, object(), usable, estimate, link=link) == []  # a workload that cannot offload
    nothing_fits = [make_estimate(large, 10.0), make_estimate(dataclasses.replace(large, checkpointing="block"), 9.0)]
    assert [e.candidate.checkpointing for e in search_offload(nothing_fits, _Offloads(), usable, estimate, link=link)] == [
        "offload"]  # offload may be the only way to fit
    assert len(asked) == 2
