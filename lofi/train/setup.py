"""From what the user asked (`lofi train` options) to a TrainConfig and a Plan: the
data (theirs, or the synthetic default), the plan (theirs, or made for the hardware
found here), and the recipes with the user's overrides."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lofi.errors import OptionError
from lofi.train import defaults
from lofi.train.config import HEAD_RECIPES, LOFI_RECIPE, DataConfig, OptimConfig, TrainConfig
from planner.fidelity import Fidelity
from planner.plan_file import Plan


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
        from planner.trace_cache import cache_root

        paths = ensure_synthetic(cache_root(), SynthConfig(), progress=progress)
        full = defaults.SYNTH_FULL_FIDELITY
        data = DataConfig(
            annotations=str(paths.annotations), media_root=str(paths.videos_dir), classification=str(paths.classification),
            full_fidelity=_fidelity(options, full), stride=options.stride or defaults.SYNTH_STRIDE,
            flip=defaults.SYNTH_FLIP if options.flip is None else options.flip,
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
            stride=options.stride or 8, flip=True if options.flip is None else options.flip,
        )
        synthetic = False
    training = len(load_annotations(data.annotations, subsets=[data.train_subset]).records)
    if training == 0:
        raise OptionError(f"{data.annotations}: no video in the '{data.train_subset}' subset")
    return ResolvedData(data, synthetic, training)


def _fidelity(options: DataOptions, default: Fidelity) -> Fidelity:
    try:
        return Fidelity(options.full_tr or default.tr, options.full_sr or default.sr,
                        options.frames_per_snippet or default.frames_per_snippet)
    except ValueError as error:
        raise OptionError(f"full fidelity: {error}") from None


def auto_plan(
    resolved: ResolvedData, options: PlanOptions, *, progress: Callable[[int, int], None] | None = None
) -> tuple[Plan, tuple[str, ...]]:
    """Plan for the hardware found here (or --gpu NAME): the synthetic default on a CPU
    gets the CPU grid and time budget; everything else the paper's grid."""
    from lofi.plan_workload import lofi_workload
    from planner.cpu_speed import with_measured_speed
    from planner.grid import GridSpec
    from planner.nvml import resolve_target
    from planner.planning import PlanRequest, make_plan
    from planner.profiles import list_profiles

    target = resolve_target(options.gpu, list_profiles(), gpus=options.gpus, fallback="cpu")
    profile = target.profile
    frames = resolved.data.full_fidelity.frames_per_snippet
    budget = None if options.max_epoch_hours is None else options.max_epoch_hours * 3600
    if profile.kind == "cpu":
        profile = with_measured_speed(profile)
    if profile.kind == "cpu" and resolved.synthetic:
        spec = replace(defaults.CPU_GRID, gpus=options.gpus, nodes=options.nodes, head=options.head,
                       backbones=options.backbones or defaults.CPU_GRID.backbones)
        budget = budget if budget is not None else defaults.CPU_EPOCH_BUDGET_SECONDS
    else:
        base = GridSpec()
        spec = replace(
            base, gpus=options.gpus, nodes=options.nodes, head=options.head,
            backbones=options.backbones or base.backbones,
            fidelities=tuple(replace(f, frames_per_snippet=frames) for f in base.fidelities),
            cycles=tuple(tuple(replace(f, frames_per_snippet=frames) for f in c) for c in base.cycles),
        )
    request = PlanRequest(spec, profile, margin=options.margin, videos_per_epoch=resolved.training_videos,
                          dataset=f"the training subset of {resolved.data.annotations}", detected=target.detected,
                          notices=target.notices, max_seconds_per_epoch=budget)
    return make_plan(request, lofi_workload(), progress=progress), target.notices


def build_config(resolved: ResolvedData, plan: Plan, overrides: RecipeOverrides, *, pretrained: str | None,
                 baseline: bool, from_scratch: bool = False) -> TrainConfig:
    """The run's configuration: the plan's backbone and head, the stage recipes (the
    paper's, or the CPU defaults for the synthetic data on a CPU) with overrides. On the
    synthetic data without --pretrained (and without `from_scratch`) the encoder starts
    from action-classification pre-training on its training instances (the pretrain
    stage; cached), so LoFi and the ACP baseline share one pre-trained encoder."""
    cpu_synthetic = resolved.synthetic and plan.hardware.kind == "cpu"
    lofi_recipe = defaults.CPU_LOFI_RECIPE if cpu_synthetic else LOFI_RECIPE
    head_recipe = defaults.CPU_HEAD_RECIPE if cpu_synthetic else HEAD_RECIPES[plan.chosen.head]
    values: dict[str, Any] = {
        "head_batch": defaults.CPU_HEAD_BATCH if cpu_synthetic else 16,
        **{k: v for k, v in overrides.config.items() if v is not None},
    }
    pretrain = None
    if pretrained is None and resolved.synthetic and not from_scratch:
        from lofi.train.pretrain_stage import cached_weights_path
        from planner.trace_cache import cache_root

        pretrain = defaults.SYNTH_PRETRAIN
        pretrained = str(cached_weights_path(cache_root(), plan.chosen.backbone, resolved.data, pretrain))
    return TrainConfig(
        data=resolved.data,
        backbone=plan.chosen.backbone,
        head=plan.chosen.head,
        lofi=_override(lofi_recipe, overrides.lofi),
        head_stage=_override(head_recipe, overrides.head),
        pretrained=pretrained,
        pretrain=pretrain,
        baseline=baseline,
        **values,
    )


def _override(recipe: OptimConfig, values: dict[str, Any]) -> OptimConfig:
    return replace(recipe, **{k: v for k, v in values.items() if v is not None})
