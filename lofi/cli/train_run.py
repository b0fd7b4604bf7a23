"""The glue behind `lofi train`: turn options into a config and a plan, relaunch under
torchrun for several processes, run the pipeline, render the summary."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from lofi.cli.console import console, err_console
from lofi.errors import OptionError


def run_training(options: dict[str, Any], argv: list[str]) -> None:
    from lofi.train.distributed import launch_torchrun, launched_by_torchrun

    if options["gpus"] < 1:
        raise OptionError(f"--gpus must be >= 1, got {options['gpus']}")
    run_dir = _run_dir(options)
    if options["gpus"] > 1 and not launched_by_torchrun():
        plan_path = _prepare_parent(options, run_dir)
        code = launch_torchrun(options["gpus"], ["train", *_child_args(argv, plan_path)])
        if code:
            raise SystemExit(code)
        return
    from lofi.train.run_folder import claim_run_folder

    with claim_run_folder(run_dir, enabled=os.environ.get("RANK", "0") == "0", notify=_note):
        _train_here(options, run_dir)


def _note(message: str) -> None:
    err_console.print(f"[yellow]note:[/] {message}", highlight=False)


def _run_dir(options: dict[str, Any]) -> Path:
    """runs/NAME. Without --name: a fresh run takes the first free of lofi, lofi-2, ...
    (baseline, baseline-2, ... with --baseline); --resume and --stage take the latest."""
    from lofi.train.run_folder import numbered_run, run_folder

    if options["name"]:
        return run_folder(options["runs_dir"], options["name"]).root
    stem = "baseline" if options["baseline"] else "lofi"
    existing = options["resume"] or bool(options["stages"]) or options["overwrite"]
    return numbered_run(options["runs_dir"], stem, existing=existing).root


def _prepare_parent(options: dict[str, Any], run_dir: Path) -> Path:
    """Before torchrun: plan once (not once per rank) and return the plan's path."""
    from planner.plan_file import save_plan

    if options["plan_path"]:
        return options["plan_path"]
    stored = run_dir / "plan.json"
    if (options["resume"] or options["stages"]) and stored.exists():
        return stored
    _check_fresh(options, run_dir)
    resolved = _resolve_data(options)
    plan, _ = _auto_plan(options, resolved)
    path = run_dir.parent / f".{run_dir.name}.plan.json"
    save_plan(plan, path)
    return path


def _child_args(argv: list[str], plan_path: Path) -> list[str]:
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


def _check_fresh(options: dict[str, Any], run_dir: Path) -> None:
    if run_dir.exists() and any(run_dir.iterdir()):
        if options["overwrite"]:
            shutil.rmtree(run_dir)
            return
        raise OptionError(f"{run_dir} already holds a run: --resume continues it, --overwrite starts it "
                          "afresh, another --name starts a new one")


def _resolve_data(options: dict[str, Any], *, quiet: bool = False):
    """The run's data (the synthetic default without --annotations); `quiet` for the
    ranks that only read what rank 0 generated."""
    from lofi.train.setup import DataOptions, resolve_data

    data = DataOptions(options["annotations"], options["videos_dir"], options["frames_dir"], options["classification"],
                       options["full_tr"], options["full_sr"], options["frames_per_snippet"], options["stride"],
                       flip=options.get("flip"))
    if quiet:
        return resolve_data(data)
    if data.annotations is None:
        err_console.print("no --annotations: using the synthetic dataset (lofi data synth), cached after the first run",
                          highlight=False)
    with _bar("synthetic data") as advance:
        return resolve_data(data, progress=advance)


def _auto_plan(options: dict[str, Any], resolved, gpus: int | None = None, nodes: int = 1):
    """Plan for `gpus` per node x `nodes` (default: --gpus on one node) with the data
    options given, whatever the world size."""
    from lofi.train.setup import PlanOptions, auto_plan, planned_batchnorm

    plan_options = PlanOptions(options["gpu_name"], gpus or options["gpus"], nodes, options["margin"],
                               options["max_epoch_hours"], tuple(options["backbones"]), options["head"],
                               batchnorm=planned_batchnorm(resolved, options["bn_mode"], options["freeze_bn"],
                                                           pretrained=options["pretrained"] is not None,
                                                           from_scratch=options["from_scratch"]))
    with _bar("planning") as advance:
        plan, notices = auto_plan(resolved, plan_options, progress=advance)
    for notice in notices:
        err_console.print(f"[yellow]note:[/] {notice}", highlight=False)
    return plan, notices


def _train_here(options: dict[str, Any], run_dir: Path) -> None:
    import torch

    from lofi.train.config import load_config
    from lofi.train.distributed import barrier, setup_distributed, teardown_distributed
    from lofi.train.pipeline import STAGES, run_pipeline
    from lofi.train.loop import StopRequest, check_precision
    from lofi.train.plan_check import apply_alloc_conf, check_plan, check_world, plan_for_world
    from lofi.train.progress import NullProgress, RichProgress
    from lofi.train.run_folder import RunFolder
    from lofi.train.setup import build_config
    from planner.plan_file import load_plan, save_plan

    context = setup_distributed()
    try:
        run = RunFolder(run_dir)
        stored = run.config.exists() and run.plan.exists()
        if options["resume"] and not stored:
            raise OptionError(f"--resume: {run_dir} holds no run to continue (no config.json and plan.json)")
        if (options["resume"] or options["stages"]) and stored:
            config = load_config(run.config)
            plan = plan_for_world(load_plan(run.plan), context.gpus_per_node, context.nodes)
            if context.is_main:
                err_console.print(f"continuing {run_dir}: its config.json and plan.json are used", highlight=False)
        else:
            if not options["auto"] and not options["plan_path"]:
                raise OptionError("give --auto (plan for this machine) or --plan plan.json")
            if context.is_main:
                _check_fresh(options, run_dir)
            barrier(context)
            resolved = _resolve_data(options) if context.is_main else None
            barrier(context)
            resolved = resolved or _resolve_data(options, quiet=True)
            if options["plan_path"]:
                plan = load_plan(options["plan_path"])
            elif context.is_main:
                plan, _ = _auto_plan(options, resolved, context.gpus_per_node, context.nodes)
                run.create()
                save_plan(plan, run.plan)
            barrier(context, "planning")
            if not options["plan_path"] and not context.is_main:
                plan = load_plan(run.plan)
            config = build_config(resolved, plan, _overrides(options), pretrained=options["pretrained"],
                                  baseline=options["baseline"], from_scratch=options["from_scratch"])
        check_world(plan, context.gpus_per_node, context.nodes)
        check_plan(plan, config, context.device, force=options["force"] or (options["resume"] and stored),
                   notify=_note if context.is_main else None)  # a resumed run's plan was accepted at its start
        apply_alloc_conf(config.alloc_conf)
        check_precision(context.device, plan.chosen.precision)
        if context.is_main:
            _render_plan(plan, config)
        with StopRequest() as stop:
            result = run_pipeline(config, plan, run, context, stages=options["stages"] or STAGES,
                                  resume=options["resume"], stop=stop,
                                  progress=RichProgress(err_console) if context.is_main else NullProgress())
        if context.is_main:
            from lofi.cli.train_render import render_summary

            render_summary(result.summary, console)
            if result.interrupted:
                err_console.print(f"[yellow]stopped:[/] checkpoint written; `lofi train --resume --name "
                                  f"{run_dir.name}` continues", highlight=False)
        if result.interrupted:
            raise SystemExit(130)
    except torch.cuda.OutOfMemoryError as error:
        raise OptionError(f"CUDA out of memory outside the LoFi stage: {str(error).splitlines()[0]}") from None
    finally:
        teardown_distributed()


def _overrides(options: dict[str, Any]):
    from lofi.train.setup import RecipeOverrides

    lofi = {"epochs": options["epochs"], "lr": options["lr"], "name": options["optimizer"],
            "momentum": options["momentum"], "weight_decay": options["weight_decay"],
            "step_epochs": options["lr_step"], "gamma": options["lr_gamma"]}
    head = {"epochs": options["head_epochs"], "lr": options["head_lr"]}
    config = {"head_batch": options["head_batch"], "cycle": options["cycle"], "seed": options["seed"],
              "num_workers": options["workers"], "checkpoint_every": options["checkpoint_every"],
              "freeze_bn": options["freeze_bn"], "bn_mode": options["bn_mode"],
              "proposal_end": options["proposal_end"], "override_plan": options["override_plan"]}
    return RecipeOverrides(lofi, head, config)


def _render_plan(plan, config) -> None:
    from planner.choose import describe

    chosen = "baseline (no LoFi stage)" if config.baseline else describe(plan.chosen)
    err_console.print(f"[bold]plan[/] on {plan.hardware.display_name}: {chosen}", highlight=False)


class _bar:
    """A transient progress bar on stderr for (done, total) callbacks."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn(self.label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=err_console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task(self.label, total=None)
        return lambda done, total: self.progress.update(self.task, completed=done, total=total)

    def __exit__(self, *exc) -> None:
        self.progress.stop()
