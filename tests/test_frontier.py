"""The memory-time frontier of a plan's choice (planner.frontier) on hand-built plans:
which entries are its points, which fit, which are Pareto-optimal, which is chosen."""

from __future__ import annotations

from plan_helpers import cand, estimate
from lofi.plan_axes import LOFI_AXES
from planner.choose import rank_candidates, usable_bytes
from lofi.fidelities import LOW_BUDGET, ST_LOFI
from planner.frontier import frontier, plan_frontier
from planner.plan import plan_from_ranking
from planner.hardware.profiles import get_profile

V100 = get_profile("v100-32gb")
GiB = 2**30


def _plan(estimates):
    ranking = rank_candidates(estimates, usable_bytes(V100, 0.1), LOFI_AXES)
    return plan_from_ranking(ranking, V100, margin=0.1, global_batch=16, videos_per_epoch=9649, dataset="test")


def _st_r50(policy: str, gib: float, step_seconds: float, **changes):
    options = {"backbone": "tsm_r50", "batch": 4, "precision": "fp16", **changes}
    return estimate(cand(ST_LOFI, checkpointing=policy, **options), gib, step_seconds)


def test_points_are_the_choices_policies_with_fits_pareto_and_choice():
    plan = _plan([
        _st_r50("none", 30.0, 1.0),  # over the 28.8 GiB budget, fastest
        _st_r50("chunk:2", 20.0, 1.2),  # the fastest that fits: chosen
        _st_r50("block", 12.0, 1.3),
        _st_r50("chunk:4", 14.0, 1.5),  # more memory and slower than block: not on the frontier
        # other configurations: not points of this frontier
        _st_r50("block", 8.0, 2.0, batch=2),
        _st_r50("block", 9.0, 2.0, precision="fp32"),
        _st_r50("block", 6.0, 0.5, backbone="tsm_r18"),
        estimate(cand(LOW_BUDGET, backbone="tsm_r50", batch=4, precision="fp16", checkpointing="block"), 5.0, 0.3),
    ])
    assert plan.chosen.checkpointing == "chunk:2" and plan.chosen.backbone == "tsm_r50"
    result = plan_frontier(plan)
    assert result.configuration == plan.chosen
    assert result.usable_bytes == plan.scope.usable_bytes and result.capacity_bytes == 32 * GiB
    points = {p.checkpointing: p for p in result.points}
    assert [p.checkpointing for p in result.points] == ["block", "chunk:4", "chunk:2", "none"]  # least memory first
    assert {name: p.fits for name, p in points.items()} == {"block": True, "chunk:4": True, "chunk:2": True,
                                                            "none": False}
    assert {name: p.pareto for name, p in points.items()} == {"block": True, "chunk:4": False, "chunk:2": True,
                                                              "none": True}
    assert [p.checkpointing for p in result.points if p.chosen] == ["chunk:2"] and result.chosen is points["chunk:2"]
    assert points["none"].needed_bytes == 30 * GiB
    assert points["block"].seconds_per_epoch == 1.3 * 9649 / 16


def test_a_point_needing_as_much_and_as_slow_is_dominated_only_when_strictly_worse():
    plan = _plan([_st_r50("none", 20.0, 1.0), _st_r50("block", 20.0, 1.0), _st_r50("chunk:4", 20.0, 1.1)])
    points = {p.checkpointing: p for p in plan_frontier(plan).points}
    assert points["none"].pareto and points["block"].pareto  # equal: neither dominates the other
    assert not points["chunk:4"].pareto  # same memory, slower


def test_a_policy_listed_twice_is_one_point_and_a_lone_choice_is_its_own_frontier():
    plan = _plan([_st_r50("block", 12.0, 1.3)])
    single = plan_frontier(plan)
    assert len(single.points) == 1 and single.points[0].chosen and single.points[0].pareto
    twice = frontier([*plan.candidates, *plan.candidates], plan.chosen, plan.scope.usable_bytes, 32 * GiB)
    assert len(twice.points) == 1
