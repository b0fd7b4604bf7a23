"""From what the user asked (`lofi train` options) to a TrainConfig and a Plan: the
data (theirs, or the synthetic default), the plan (theirs, or made for the hardware
found here), and the recipes with the user's overrides."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lofi.errors import OptionError
from lofi.train.config import (
    CPU_EPOCH_BUDGET_SECONDS, CPU_GRID, CPU_HEAD_BATCH, CPU_HEAD_RECIPE, CPU_LOFI_RECIPE, HEAD_RECIPES, LOFI_RECIPE,
    SYNTH_FLIP, SYNTH_FULL_FIDELITY, SYNTH_PRETRAIN, SYNTH_STRIDE, DataConfig, OptimConfig, TrainConfig,
    requested_bn_mode,
)
from planner.candidate import Candidate
from lofi.fidelities import FULL
from planner.fidelity import Fidelity
from planner.plan import Plan


@dataclass(frozen=True)
class DataOptions:
    annotations: str | None = None
    videos: str | None = None
    frames: str | None = None
    classification: str | None = None
    full_tr: int | None = None
    full_sr: int | None = None
    frames_per_snippet: int | None = None
    stride: int | None = None
    flip: bool | None = None  # None: on, except for the synthetic data


@dataclass(frozen=True)
class ResolvedData:
    data: DataConfig
    synthetic: bool
    training_videos: int


@dataclass(frozen=True)
class PlanOptions:
    gpu: str = "auto"
    gpus: int = 1
    nodes: int = 1
    margin: float = 0.10
    max_epoch_hours: float | None = None
    backbones: tuple[str, ...] = ()
    head: str = "gtad"
    batchnorm: str = "frozen"  # what the trainer will do with BatchNorm (planner.candidate.BATCHNORM)


@dataclass(frozen=True)
class RecipeOverrides:
    """Values given on the command line; None keeps the default."""

    lofi: dict[str, Any] = field(default_factory=dict)  # OptimConfig fields
    head: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields


def resolve_data(options: DataOptions, progress: Callable[[int, int], None] | None = None) -> ResolvedData:
    """The user's dataset, or (no --annotations) the synthetic default, generated once."""
    from lofi.data.annotations import load_annotations

    if options.annotations is None:
        if options.videos or options.frames or options.classification:
            raise OptionError("--videos/--frames/--classification need --annotations")
        from lofi.data.synth import SynthConfig, ensure_synthetic
        from planner.cache_root import cache_root

        paths = ensure_synthetic(cache_root(), SynthConfig(), progress=progress)
        full = SYNTH_FULL_FIDELITY
        data = DataConfig(
            annotations=str(paths.annotations), media_root=str(paths.videos_dir), classification=str(paths.classification),
            full_fidelity=_fidelity(options, full), stride=_given(options.stride, SYNTH_STRIDE),
            flip=SYNTH_FLIP if options.flip is None else options.flip,
        )
        synthetic = True
    else:
        if (options.videos is None) == (options.frames is None):
            raise OptionError("with --annotations give exactly one of --videos DIR and --frames DIR")
        root = options.videos or options.frames
        if not Path(root).is_dir():
            raise OptionError(f"{root}: not a folder")
        data = DataConfig(
            annotations=options.annotations, media_root=str(root), frames=options.frames is not None,
            classification=options.classification, full_fidelity=_fidelity(options, Fidelity(100, 224, 8)),
            stride=_given(options.stride, 8), flip=True if options.flip is None else options.flip,
        )
        synthetic = False
    annotations = load_annotations(data.annotations)
    training = sum(record.subset == data.train_subset for record in annotations.records)
    if training == 0:
        raise OptionError(f"{data.annotations}: no video in the '{data.train_subset}' subset")
    if data.classification is not None:
        from lofi.train.eval_stage import check_class_scores

        check_class_scores(data.classification, annotations, data.eval_subset)  # before any training
    return ResolvedData(data, synthetic, training)


def _fidelity(options: DataOptions, default: Fidelity) -> Fidelity:
    try:
        return Fidelity(_given(options.full_tr, default.tr), _given(options.full_sr, default.sr),
                        _given(options.frames_per_snippet, default.frames_per_snippet))
    except ValueError as error:
        raise OptionError(f"full fidelity (--full-tr, --full-sr, --frames-per-snippet): {error}") from None


def _given(value: int | None, default: int) -> int:
    """The option's value when given (0 included: an error later, never a silent default)."""
    return default if value is None else value


def auto_plan(
    resolved: ResolvedData, options: PlanOptions, *, progress: Callable[[int, int], None] | None = None
) -> tuple[Plan, tuple[str, ...]]:
    """Plan for the hardware found here (or --gpu NAME): the synthetic default on a CPU
    gets the CPU grid; everything else the paper's grid. Only a time budget the user gave
    (--max-epoch-hours) rejects candidates: the default's target time per epoch never
    does (a busy machine still trains, slower); a notice says how long an epoch takes."""
    from lofi.plan_workload import lofi_workload
    from planner.hardware.cpu_speed import with_measured_speed
    from lofi.plan_axes import LOFI_AXES
    from planner.grid import GridSpec
    from lofi.plan_request import OTHER_GPU
    from planner.hardware.nvml import resolve_target
    from planner.planning import PlanRequest, make_plan
    from planner.hardware.profiles import list_profiles

    target = resolve_target(options.gpu, list_profiles(), gpus=options.gpus, fallback="cpu",
                            fallback_hint=OTHER_GPU)
    profile = target.profile
    budget = None if options.max_epoch_hours is None else options.max_epoch_hours * 3600
    target_seconds = None
    if profile.kind == "cpu":
        profile = with_measured_speed(profile)
    full = resolved.data.full_fidelity
    if profile.kind == "cpu" and resolved.synthetic:
        spec = replace(CPU_GRID, gpus=options.gpus, nodes=options.nodes, head=options.head,
                       backbones=options.backbones or CPU_GRID.backbones, batchnorm=options.batchnorm,
                       fidelities=tuple(dict.fromkeys(scaled_fidelity(f, full, SYNTH_FULL_FIDELITY)
                                                      for f in CPU_GRID.fidelities)))
        target_seconds = CPU_EPOCH_BUDGET_SECONDS
    else:
        base = GridSpec(LOFI_AXES)
        spec = replace(
            base, gpus=options.gpus, nodes=options.nodes, head=options.head,
            backbones=options.backbones or base.backbones, batchnorm=options.batchnorm,
            fidelities=tuple(dict.fromkeys(scaled_fidelity(f, full) for f in base.fidelities)),
            cycles=tuple(tuple(scaled_fidelity(f, full) for f in c) for c in base.cycles),
        )
    request = PlanRequest(spec, profile, margin=options.margin, videos_per_epoch=resolved.training_videos,
                          dataset=f"the training subset of {resolved.data.annotations}", detected=target.detected,
                          notices=target.notices, max_seconds_per_epoch=budget)
    plan = make_plan(request, lofi_workload(), progress=progress)
    notices = target.notices + _duration_notice(plan, target_seconds)
    return replace(plan, notices=plan.notices + notices[len(target.notices):]), notices


def _duration_notice(plan: Plan, target_seconds: float | None) -> tuple[str, ...]:
    """How long a LoFi epoch of the chosen candidate is estimated to take here, and
    whether that is over the time the default is sized for."""
    if plan.time is None:
        return ()
    epoch = plan.time.seconds_per_epoch
    message = f"the LoFi stage is estimated at {_minutes(epoch)} per epoch on {plan.scope.hardware.display_name}"
    if target_seconds is not None and epoch > target_seconds:
        message += (f", over the {_minutes(target_seconds)} the default is sized for (a busy or slow machine): "
                    "the run trains anyway and takes longer; --max-epoch-hours sets a limit")
    return (message,)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def scaled_fidelity(fidelity: Fidelity, full: Fidelity, reference: Fidelity = FULL) -> Fidelity:
    """`fidelity` (one of the paper's, relative to its full 100/224, or the synthetic
    grid's, relative to SYNTH_FULL_FIDELITY) at the run's own full fidelity:
    the same fraction of snippets and of frame size (never below what the heads and
    the encoder take), the run's frames per snippet. The
    paper's grid at 100/224/8 is unchanged; at any world size the same data options
    give the same grid."""
    from lofi.models.heads import MIN_TEMPORAL_DIM  # the heads' smallest TR

    tr = max(MIN_TEMPORAL_DIM, round(fidelity.tr * full.tr / reference.tr))
    sr = max(32, round(fidelity.sr * full.sr / reference.sr))
    return Fidelity(min(tr, full.tr), min(sr, full.sr), full.frames_per_snippet)


def planned_batchnorm(resolved: ResolvedData, bn_mode: str | None, freeze_bn: bool | None, *, pretrained: bool,
                      from_scratch: bool) -> str:
    """The plan's BatchNorm (planner.candidate.BATCHNORM) for what `lofi train` will run:
    the mode asked for, else the default for the encoder it starts from (pre-trained
    weights given, or the synthetic default's pre-training, `build_config`)."""
    from lofi.models.lofi_model import plan_bn_name
    from lofi.train.config import default_bn_mode

    starts_pretrained = pretrained or _pretrains_synthetic(resolved, from_scratch)
    return plan_bn_name(requested_bn_mode(bn_mode, freeze_bn) or default_bn_mode(starts_pretrained))


def _pretrains_synthetic(resolved: ResolvedData, from_scratch: bool) -> bool:
    """The synthetic default starts from its cached pre-training unless --from-scratch."""
    return resolved.synthetic and not from_scratch


def build_config(resolved: ResolvedData, plan: Plan, overrides: RecipeOverrides, *, pretrained: str | None,
                 baseline: bool, from_scratch: bool = False) -> TrainConfig:
    """The run's configuration: the plan's backbone and head, the stage recipes (the
    paper's, or the CPU defaults for the synthetic data on a CPU) with overrides, and
    the plan's optimizer and BatchNorm mode (`follow_plan`). On the synthetic data
    without --pretrained (and without `from_scratch`) the encoder starts from
    action-classification pre-training on its training instances (the pretrain stage;
    cached), so LoFi and the ACP baseline share one pre-trained encoder."""
    from lofi.train.plan_check import check_names

    check_names(plan.chosen.backbone, plan.chosen.head)  # before the recipes are looked up by name
    cpu_synthetic = resolved.synthetic and plan.scope.hardware.kind == "cpu"
    lofi_recipe = CPU_LOFI_RECIPE if cpu_synthetic else LOFI_RECIPE
    head_recipe = CPU_HEAD_RECIPE if cpu_synthetic else HEAD_RECIPES[plan.chosen.head]
    values: dict[str, Any] = {
        "head_batch": CPU_HEAD_BATCH if cpu_synthetic else 16,
        **{k: v for k, v in overrides.config.items() if v is not None},
    }
    override = bool(values.pop("override_plan", False))
    requested = requested_bn_mode(values.pop("bn_mode", None), values.pop("freeze_bn", None))
    lofi, bn_mode, overridden = follow_plan(plan.chosen, lofi_recipe, overrides.lofi, requested, override=override)
    values["bn_mode"] = bn_mode
    pretrain = None
    if pretrained is None and _pretrains_synthetic(resolved, from_scratch):
        from lofi.train.pretrain_stage import cached_weights_path
        from planner.cache_root import cache_root

        pretrain = SYNTH_PRETRAIN
        pretrained = str(cached_weights_path(cache_root(), plan.chosen.backbone, resolved.data, pretrain))
    return TrainConfig(
        data=resolved.data,
        backbone=plan.chosen.backbone,
        head=plan.chosen.head,
        lofi=lofi,
        head_stage=_override(head_recipe, overrides.head),
        pretrained=pretrained,
        pretrain=pretrain,
        baseline=baseline,
        alloc_conf=plan.chosen.alloc_conf,
        plan_overrides=overridden,
        **values,
    )


def follow_plan(candidate: Candidate, recipe: OptimConfig, lofi: dict[str, Any], bn_mode: str | None, *,
                override: bool = False) -> tuple[OptimConfig, str, tuple[str, ...]]:
    """The LoFi recipe and BatchNorm mode of the plan's candidate: its optimizer (the
    recipe's when they agree; else the planned one at its default learning rate) and its
    BatchNorm mode (an encoder bn_mode). A command-line choice (`bn_mode`: what the user
    asked for, or None) that contradicts the plan is an OptionError naming both values,
    unless `override`: then the user's value is used and listed in the returned
    overrides (recorded in the run's config.json)."""
    from lofi.models.lofi_model import PLAN_BN_MODES, plan_bn_name
    from planner.workload import OPTIMIZER_SETTINGS, optimizer_name

    name, momentum = OPTIMIZER_SETTINGS[candidate.optimizer]
    if optimizer_name(recipe.name, recipe.momentum) != candidate.optimizer:
        recipe = replace(recipe, name=name, momentum=momentum, lr=_DEFAULT_LR[name])
    chosen = _override(recipe, lofi)
    overridden = []
    used = optimizer_name(chosen.name, chosen.momentum)
    if used != candidate.optimizer:
        given = " ".join(f"--{k.replace('name', 'optimizer')} {lofi[k]}" for k in ("name", "momentum")
                         if lofi.get(k) is not None)
        _contradiction(f"{given} trains with {used}", f"optimizer {candidate.optimizer}", override)
        overridden.append(f"optimizer: {candidate.optimizer} -> {used}")
    planned = PLAN_BN_MODES[candidate.batchnorm]
    if bn_mode is not None and bn_mode != planned:
        _contradiction(f"BatchNorm mode {bn_mode} (--bn-mode, --freeze-bn/--train-bn)", f"batchnorm {candidate.batchnorm}",
                       override)
        overridden.append(f"batchnorm: {candidate.batchnorm} -> {plan_bn_name(bn_mode)}")
    return chosen, bn_mode or planned, tuple(overridden)


# Learning rate for an optimizer the recipe does not use: the paper's SGD lr, and the
# Adam lr of the CPU recipe (config.py, docs/synthetic.md).
_DEFAULT_LR = {"sgd": LOFI_RECIPE.lr, "adam": CPU_LOFI_RECIPE.lr}


def _contradiction(given: str, planned: str, override: bool) -> None:
    if not override:
        raise OptionError(f"{given} contradicts the plan's {planned} (the plan's memory estimate assumes it); "
                          "drop the option, plan again, or pass --override-plan to train with it anyway")


def _override(recipe: OptimConfig, values: dict[str, Any]) -> OptimConfig:
    return replace(recipe, **{k: v for k, v in values.items() if v is not None})
