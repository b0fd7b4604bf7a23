"""The candidate grid: the paper's configurations by default, options narrow or widen
it, accumulation reaches the global batch exactly, bf16 only where the GPU has it."""

from __future__ import annotations

import pytest

from lofi.plan_axes import LOFI_AXES
from lofi.cli.console import option_setting
from planner.errors import FieldError, PlannerError
from lofi.fidelities import C_LOFI_CYCLE, FULL, LOW_BUDGET, S_LOFI, ST_LOFI, T_LOFI
from planner.fidelity import Fidelity
from planner.grid import GridSpec, accumulation_steps, build_grid, parse_ints, parse_list, select_fidelities
from planner.hardware.profiles import get_profile

V100 = get_profile("v100-32gb")
A100 = get_profile("a100-80gb")


def test_default_grid_is_the_papers_configurations_times_the_options():
    grid = build_grid(GridSpec(LOFI_AXES), V100)
    trainings = {c.fidelities for c in grid}
    assert trainings == {(FULL,), (S_LOFI,), (T_LOFI,), (ST_LOFI,), (LOW_BUDGET,), C_LOFI_CYCLE}
    assert {c.backbone for c in grid} == {"tsm_r18", "tsm_r34", "tsm_r50"}
    assert {c.batch_per_gpu for c in grid} == {1, 2, 4, 8, 16}
    assert {c.precision for c in grid} == {"fp32", "fp16"}  # V100: no bf16
    assert {c.checkpointing for c in grid} == {"none", "block", "chunk:4"}  # blocks:N, offload: searched
    assert all(c.global_batch == 16 and c.head == "gtad" and c.optimizer == "sgd" for c in grid)
    assert len(grid) == 6 * 3 * 5 * 2 * 3
    assert len(set(grid)) == len(grid)
    cycle = [c for c in grid if c.cycle is not None]
    assert cycle and all(c.fidelity is None and c.cycle == C_LOFI_CYCLE for c in cycle)


def test_bf16_only_where_the_gpu_has_it():
    assert "bf16" in {c.precision for c in build_grid(GridSpec(LOFI_AXES), A100)}
    with pytest.raises(PlannerError, match="v100-32gb .* has no bf16"):
        build_grid(GridSpec(LOFI_AXES, precisions=("bf16",)), V100)
    assert {c.precision for c in build_grid(GridSpec(LOFI_AXES), get_profile("cpu"))} == {"fp32"}


def test_offload_only_where_there_is_a_device_to_offload_from():
    cpu = get_profile("cpu")
    assert {c.checkpointing for c in build_grid(GridSpec(LOFI_AXES), cpu)} == {"none", "block", "chunk:4"}
    assert {c.checkpointing for c in build_grid(GridSpec(LOFI_AXES, checkpointing=("offload+head", "block")), V100)} == {
        "offload+head", "block"}
    with pytest.raises(FieldError, match="checkpointing offload: offload moves activations to host memory; on cpu"):
        build_grid(GridSpec(LOFI_AXES, checkpointing=("offload",)), cpu)


@pytest.mark.parametrize(
    "batch, world, allow, expected",
    [(1, 1, True, 16), (4, 4, True, 1), (2, 4, True, 2), (3, 1, True, None), (8, 4, True, None),
     (4, 1, False, None), (16, 1, False, 1), (4, 4, False, 1)],
)
def test_accumulation_reaches_the_global_batch_exactly(batch, world, allow, expected):
    assert accumulation_steps(batch, world, 16, allow) == expected


def test_accumulation_and_world_size_across_nodes():
    grid = build_grid(GridSpec(LOFI_AXES, gpus=4, nodes=2, batches=(1, 2, 4)), V100)
    assert {(c.batch_per_gpu, c.accumulation) for c in grid} == {(1, 2), (2, 1)}  # 4 x 8 > 16 is skipped
    assert all(c.world_size == 8 for c in grid)


def test_no_accumulation_needs_batch_times_world_equal_to_global_batch():
    one = build_grid(GridSpec(LOFI_AXES, accumulation=False), V100)
    assert {(c.batch_per_gpu, c.accumulation) for c in one} == {(16, 1)}
    four = build_grid(GridSpec(LOFI_AXES, accumulation=False, gpus=4), V100)
    assert {(c.batch_per_gpu, c.accumulation) for c in four} == {(4, 1)}
    with pytest.raises(FieldError, match="batches: .* without accumulation: that needs batches 4") as caught:
        build_grid(GridSpec(LOFI_AXES, accumulation=False, gpus=4, batches=(1, 2)), V100)
    cli = caught.value.render(option_setting)  # the CLI names its options, the planner its fields
    assert cli.startswith("--batch: no batch per GPU in {1, 2}") and cli.endswith("that needs --batch 4")
    with pytest.raises(FieldError, match="global_batch/gpus: global batch 16 cannot be split evenly over 3 GPUs"):
        build_grid(GridSpec(LOFI_AXES, gpus=3), V100)


def test_options_narrow_the_grid_for_a_custom_trainer_grid():
    spec = GridSpec(
        LOFI_AXES, fidelities=(Fidelity(4, 32),), cycles=(), backbones=("tsm_r18",), batches=(2,),
        precisions=("fp32",), checkpointing=("none",), global_batch=4, head="bmn", optimizer="adam",
    )
    (only, other) = build_grid(spec, get_profile("cpu")) + [None]
    assert other is None
    assert (only.fidelity, only.batch_per_gpu, only.accumulation, only.head, only.optimizer) == (
        Fidelity(4, 32), 2, 2, "bmn", "adam")


def test_bad_options_are_errors_naming_the_option():
    with pytest.raises(PlannerError, match="^backbones: unknown backbone 'resnet9'"):
        build_grid(GridSpec(LOFI_AXES, backbones=("resnet9",)), V100)
    with pytest.raises(PlannerError, match="^checkpointing: .*chunk:K"):
        build_grid(GridSpec(LOFI_AXES, checkpointing=("chunk:0",)), V100)
    with pytest.raises(PlannerError, match="^head: unknown head 'actionformer'"):
        build_grid(GridSpec(LOFI_AXES, head="actionformer"), V100)
    with pytest.raises(FieldError, match="^batches: expected whole numbers"):
        parse_ints(["1,two"], "batches")
    with pytest.raises(FieldError, match="^backbones: empty item"):
        parse_list(["tsm_r18,"], "backbones")


def test_field_errors_name_the_field_and_render_with_other_names():
    error = FieldError(("tr", "sr"), "sr must be >= 32, got 16")
    assert str(error) == "tr/sr: sr must be >= 32, got 16"
    assert error.render(lambda field, value: f"--{field}") == "--tr/--sr: sr must be >= 32, got 16"
    error = FieldError("precisions", "no bf16 here", value="bf16")
    assert str(error) == "precisions bf16: no bf16 here" and isinstance(error, PlannerError)
    assert error.render(lambda field, value: f"--precision={value}") == "--precision=bf16: no bf16 here"
    assert str(FieldError("global_batch", "must be >= 1, got 0", separator=" ")) == "global_batch must be >= 1, got 0"
    with pytest.raises(FieldError, match="^global_batch must be >= 1"):
        build_grid(GridSpec(LOFI_AXES, global_batch=0), V100)


def test_select_fidelities_from_tr_sr_and_names():
    assert select_fidelities(LOFI_AXES) == (
        (FULL, S_LOFI, T_LOFI, ST_LOFI, LOW_BUDGET), (C_LOFI_CYCLE,))
    fidelities, cycles = select_fidelities(LOFI_AXES, trs=[25], srs=[112, 224])
    assert fidelities == (Fidelity(25, 112), Fidelity(25, 224)) and cycles == ()
    fidelities, _ = select_fidelities(LOFI_AXES, srs=[112])  # TR takes the paper's values
    assert fidelities == (Fidelity(100, 112), Fidelity(50, 112), Fidelity(25, 112))
    fidelities, cycles = select_fidelities(LOFI_AXES, names=["T", "C"])
    assert fidelities == (T_LOFI,) and cycles == (C_LOFI_CYCLE,)
    with pytest.raises(PlannerError, match="^fidelity: unknown name 'X'"):
        select_fidelities(LOFI_AXES, names=["X"])
    with pytest.raises(PlannerError, match="sr must be >= 32"):
        select_fidelities(LOFI_AXES, trs=[25], srs=[16])
