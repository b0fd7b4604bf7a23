"""`lofi train`'s options -> lofi.train.launch.TrainRequest, the hooks through which a run
talks to the terminal, and the rendering of what it returns."""

from __future__ import annotations

from typing import Any

from lofi.cli.console import StageBars, console, counting, err_console, note


def run_training(options: dict[str, Any], argv: list[str]) -> None:
    from lofi.train.launch import train

    outcome = train(train_request(options), argv, hooks())
    if outcome.exit_code:
        raise SystemExit(outcome.exit_code)
    if outcome.summary is not None:
        from lofi.cli.train_render import render_summary

        render_summary(outcome.summary, console)
        if outcome.interrupted:
            err_console.print(f"[yellow]stopped:[/] checkpoint written; `lofi train --resume --name "
                              f"{outcome.run_dir.name}` continues", highlight=False)
    if outcome.interrupted:
        raise SystemExit(130)


def hooks():
    from lofi.train.launch import TrainHooks

    return TrainHooks(note=note, say=lambda line: err_console.print(line, highlight=False, markup=False),
                      counting=counting, stages=StageBars, planned=_render_plan)


def data_options(options: dict[str, Any]):
    from lofi.train.options import DataOptions

    return DataOptions(options["annotations"], options["videos_dir"], options["frames_dir"], options.get("classification"),
                       options["full_tr"], options["full_sr"], options["frames_per_snippet"], options["stride"],
                       flip=options.get("flip"))


def train_request(options: dict[str, Any]):
    from lofi.train.launch import TrainRequest
    from lofi.train.options import PlanOptions, RecipeOverrides

    lofi = {"epochs": options["epochs"], "lr": options["lr"], "name": options["optimizer"],
            "momentum": options["momentum"], "weight_decay": options["weight_decay"],
            "step_epochs": options["lr_step"], "gamma": options["lr_gamma"]}
    head = {"epochs": options["head_epochs"], "lr": options["head_lr"]}
    config = {"head_batch": options["head_batch"], "cycle": options["cycle"], "seed": options["seed"],
              "num_workers": options["workers"], "checkpoint_every": options["checkpoint_every"],
              "freeze_bn": options["freeze_bn"], "bn_mode": options["bn_mode"],
              "proposal_end": options["proposal_end"], "override_plan": options["override_plan"]}
    planning = PlanOptions(options["gpu_name"], options["gpus"], 1, options["margin"], options["max_epoch_hours"],
                           tuple(options["backbones"]), options["head"])
    return TrainRequest(
        auto=options["auto"], plan_path=options["plan_path"], stages=tuple(options["stages"]),
        runs_dir=options["runs_dir"], name=options["name"], resume=options["resume"], overwrite=options["overwrite"],
        force=options["force"], baseline=options["baseline"], from_scratch=options["from_scratch"],
        pretrained=options["pretrained"], gpus=options["gpus"], data=data_options(options), planning=planning,
        bn_mode=options["bn_mode"], freeze_bn=options["freeze_bn"], overrides=RecipeOverrides(lofi, head, config),
    )


def _render_plan(plan, config) -> None:
    from lofi.plan_axes import describe

    chosen = "baseline (no LoFi stage)" if config.baseline else describe(plan.chosen)
    err_console.print(f"[bold]plan[/] on {plan.scope.hardware.display_name}: {chosen}", highlight=False)
