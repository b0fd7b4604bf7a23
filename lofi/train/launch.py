"""How `lofi train` starts: the run folder it claims, several processes relaunched under
torchrun (planned once, then each rank given the plan file), or this process running the
pipeline: a fresh run planned or read from --plan, or a stopped one resumed from the
config.json and plan.json of its folder.

`python -m lofi.train.launch <torchrun arguments>` is torchrun itself (its rendezvous,
its agent, its signal handling) without the Python traceback it prints when a rank
fails. Each rank has already printed its own one-line error; it exits with the code that
says most (a user error 2, nothing fits 3, stopped by a signal 130, else the first
failure's)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lofi.errors import OptionError
from lofi.train.config import TrainConfig
from lofi.train.progress import StageProgress
from lofi.train.options import DataOptions, PlanOptions, RecipeOverrides, ResolvedData
from planner.plan import Plan

Counter = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True)
class TrainRequest:
    """What `lofi train` was asked, parsed."""

    auto: bool  # plan for the hardware here
    plan_path: Path | None  # or train this plan.json
    stages: tuple[str, ...]  # empty: every stage
    runs_dir: Path
    name: str | None  # None: the first free lofi, lofi-2, ... (baseline... with `baseline`)
    resume: bool
    overwrite: bool
    force: bool  # a plan made for other hardware
    baseline: bool
    from_scratch: bool
    pretrained: str | None
    gpus: int  # processes; > 1 relaunches under torchrun
    data: DataOptions
    planning: PlanOptions  # its batchnorm is decided from the data (options.planned_batchnorm)
    bn_mode: str | None
    freeze_bn: bool | None
    overrides: RecipeOverrides


@dataclass(frozen=True)
class TrainHooks:
    """How a run talks to whoever started it (the CLI renders; tests may collect)."""

    note: Callable[[str], None]  # something worth knowing, not an error
    say: Callable[[str], None]  # a plain line of progress
    counting: Callable[[str], AbstractContextManager[Counter]]  # a (done, total) bar for a labelled step
    stages: Callable[[], StageProgress]  # the pipeline's progress on the main rank
    planned: Callable[[Plan, TrainConfig], None]  # the plan about to be trained (main rank)


@dataclass(frozen=True)
class TrainOutcome:
    run_dir: Path
    exit_code: int = 0  # of the torchrun launch; 0 here
    summary: dict[str, Any] | None = None  # the run's summary.json, on the main rank
    interrupted: bool = False  # stopped by a signal, checkpoint written


def train(request: TrainRequest, argv: list[str], hooks: TrainHooks) -> TrainOutcome:
    """Run `lofi train`: relaunch under torchrun for several processes (this process
    plans once and waits; `argv` is its command line), else claim the run folder and run
    the pipeline here."""
    from lofi.train.distributed import launch_torchrun, launched_by_torchrun
    from lofi.train.run_folder import claim_run_folder

    if request.gpus < 1:
        raise OptionError(f"--gpus must be >= 1, got {request.gpus}")
    run_dir = _run_dir(request)
    if request.gpus > 1 and not launched_by_torchrun():
        plan_path = _prepare_parent(request, run_dir, hooks)
        return TrainOutcome(run_dir, exit_code=launch_torchrun(request.gpus, ["train", *child_args(argv, plan_path)]))
    with claim_run_folder(run_dir, enabled=os.environ.get("RANK", "0") == "0", notify=hooks.note):
        return _train_here(request, run_dir, hooks)


def child_args(argv: list[str], plan_path: Path) -> list[str]:
    """The command line for each torchrun rank: no --gpus/--auto (planned already),
    the plan file instead."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("train", "--auto"):
            continue
        if arg in ("--gpus", "--plan"):
            skip = True
            continue
        if arg.startswith(("--gpus=", "--plan=")):
            continue
        out.append(arg)
    return [*out, "--plan", str(plan_path)]


def apply_planned_alloc_conf(path: Path) -> None:
    """The PYTORCH_CUDA_ALLOC_CONF of the plan at `path`, set before anything starts CUDA
    (a plan that does not load is reported where it is loaded for training)."""
    from lofi.train.plan_check import apply_alloc_conf
    from planner.errors import PlanFileError
    from planner.plan_file import load_plan

    try:
        apply_alloc_conf(load_plan(path).chosen.alloc_conf)
    except PlanFileError:
        pass


def resolve_run_data(data: DataOptions, hooks: TrainHooks | None = None) -> ResolvedData:
    """The run's data (the synthetic default without --annotations, generated once with a
    bar); without `hooks`, quietly (the ranks that only read what rank 0 generated)."""
    from lofi.train.options import resolve_data

    if hooks is None:
        return resolve_data(data)
    if data.annotations is None:
        hooks.say("no --annotations: using the synthetic dataset (lofi data synth), cached after the first run")
    with hooks.counting("synthetic data") as advance:
        return resolve_data(data, progress=advance)


def _run_dir(request: TrainRequest) -> Path:
    """runs/NAME. Without a name: a fresh run takes the first free of lofi, lofi-2, ...
    (baseline, baseline-2, ... for the baseline); --resume and --stage take the latest."""
    from lofi.train.run_folder import numbered_run, run_folder

    if request.name:
        return run_folder(request.runs_dir, request.name).root
    stem = "baseline" if request.baseline else "lofi"
    existing = request.resume or bool(request.stages) or request.overwrite
    return numbered_run(request.runs_dir, stem, existing=existing).root


def _prepare_parent(request: TrainRequest, run_dir: Path, hooks: TrainHooks) -> Path:
    """Before torchrun: plan once (not once per rank) and return the plan's path."""
    from planner.plan_file import save_plan

    if request.plan_path:
        return request.plan_path
    stored = run_dir / "plan.json"
    if (request.resume or request.stages) and stored.exists():
        return stored
    _check_fresh(request, run_dir)
    plan = _auto_plan(request, resolve_run_data(request.data, hooks), hooks)
    path = run_dir.parent / f".{run_dir.name}.plan.json"
    save_plan(plan, path)
    return path


def _check_fresh(request: TrainRequest, run_dir: Path) -> None:
    if run_dir.exists() and any(run_dir.iterdir()):
        if request.overwrite:
            shutil.rmtree(run_dir)
            return
        raise OptionError(f"{run_dir} already holds a run: --resume continues it, --overwrite starts it "
                          "afresh, another --name starts a new one")


def _auto_plan(request: TrainRequest, resolved: ResolvedData, hooks: TrainHooks, gpus: int | None = None,
               nodes: int = 1) -> Plan:
    """Plan for `gpus` per node x `nodes` (default: --gpus on one node) with the data
    options given, whatever the world size."""
    from lofi.train.options import auto_plan, planned_batchnorm

    batchnorm = planned_batchnorm(resolved, request.bn_mode, request.freeze_bn,
                                  pretrained=request.pretrained is not None, from_scratch=request.from_scratch)
    options = replace(request.planning, gpus=gpus or request.gpus, nodes=nodes, batchnorm=batchnorm)
    with hooks.counting("planning") as advance:
        plan, notices = auto_plan(resolved, options, progress=advance)
    for notice in notices:
        hooks.note(notice)
    return plan


def _train_here(request: TrainRequest, run_dir: Path, hooks: TrainHooks) -> TrainOutcome:
    import torch

    from lofi.train.plan_check import apply_alloc_conf
    from lofi.train.distributed import setup_distributed, teardown_distributed
    from lofi.train.pipeline import STAGES, run_pipeline
    from lofi.train.plan_check import check_plan
    from lofi.train.loop import check_precision
    from lofi.train.progress import NullProgress
    from lofi.train.run_folder import RunFolder
    from lofi.train.loop import StopRequest
    from lofi.train.plan_check import check_world

    context = setup_distributed()
    try:
        run = RunFolder(run_dir)
        stored = run.config.exists() and run.plan.exists()
        config, plan = _config_and_plan(request, run, stored, context, hooks)
        check_world(plan, context.gpus_per_node, context.nodes)
        check_plan(plan, config, context.device, force=request.force or (request.resume and stored),
                   notify=hooks.note if context.is_main else None)  # a resumed run's plan was accepted at its start
        apply_alloc_conf(config.alloc_conf)
        check_precision(context.device, plan.chosen.precision)
        if context.is_main:
            hooks.planned(plan, config)
        with StopRequest() as stop:
            result = run_pipeline(config, plan, run, context, stages=request.stages or STAGES,
                                  resume=request.resume, stop=stop,
                                  progress=hooks.stages() if context.is_main else NullProgress())
        return TrainOutcome(run_dir, summary=result.summary if context.is_main else None,
                            interrupted=result.interrupted)
    except torch.cuda.OutOfMemoryError as error:
        raise OptionError(f"CUDA out of memory outside the LoFi stage: {str(error).splitlines()[0]}") from None
    finally:
        teardown_distributed()


def _config_and_plan(request: TrainRequest, run, stored: bool, context, hooks: TrainHooks) -> tuple[TrainConfig, Plan]:
    """A stopped run's own config.json and plan.json (--resume, --stage), or a fresh run's:
    rank 0 checks the folder, generates the data and plans; the others wait and read."""
    from lofi.train.config import load_config
    from lofi.train.distributed import barrier
    from lofi.train.options import build_config
    from lofi.train.plan_check import plan_for_world
    from planner.plan_file import load_plan, save_plan

    if request.resume and not stored:
        raise OptionError(f"--resume: {run.root} holds no run to continue (no config.json and plan.json)")
    if (request.resume or request.stages) and stored:
        config = load_config(run.config)
        plan = plan_for_world(load_plan(run.plan), context.gpus_per_node, context.nodes)
        if context.is_main:
            hooks.say(f"continuing {run.root}: its config.json and plan.json are used")
        return config, plan
    if not request.auto and not request.plan_path:
        raise OptionError("give --auto (plan for this machine) or --plan plan.json")
    if context.is_main:
        _check_fresh(request, run.root)
    barrier(context)
    resolved = resolve_run_data(request.data, hooks) if context.is_main else None
    barrier(context)
    resolved = resolved or resolve_run_data(request.data)
    if request.plan_path:
        plan = load_plan(request.plan_path)
    elif context.is_main:
        plan = _auto_plan(request, resolved, hooks, context.gpus_per_node, context.nodes)
        run.create()
        save_plan(plan, run.plan)
    barrier(context, "planning")
    if not request.plan_path and not context.is_main:
        plan = load_plan(run.plan)
    config = build_config(resolved, plan, request.overrides, pretrained=request.pretrained,
                          baseline=request.baseline, from_scratch=request.from_scratch)
    return config, plan


# --- python -m lofi.train.launch: torchrun without its traceback ------------------------

MEANINGFUL = (130, 3, 2)  # in this order of precedence


def exit_code(codes: list[int]) -> int:
    """The code of a failed run from its ranks' codes (first failure first)."""
    for code in MEANINGFUL:
        if code in codes:
            return code
    code = next((c for c in codes if c), 1)
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell says


def main(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv)
    except ChildFailedError as error:
        first, _ = error.get_first_failure()
        ordered = [error.failures[first], *(f for r, f in error.failures.items() if r != first)]
        return exit_code([failure.exitcode for failure in ordered])
    except SignalException:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
