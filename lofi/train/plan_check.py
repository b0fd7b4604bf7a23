"""Before a plan is trained: its encoder and head exist here, and the hardware it was made
for is the hardware found. A plan for a GPU run on a CPU, on a GPU with less memory, or
over more devices than there are, is refused without `--force`; a milder mismatch (another
GPU model with as much memory, a CPU plan on a GPU) is a warning."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lofi.errors import OptionError
from lofi.train.config import TrainConfig
from planner.plan_file import Plan

GIB = 2**30


def check_plan(plan: Plan, config: TrainConfig, device: torch.device, *, force: bool = False,
               notify: Callable[[str], None] | None = None) -> None:
    """Raise OptionError for a plan this lofi cannot train (unknown names) or, without
    `force`, one made for other hardware; `notify` gets the warnings."""
    check_names(plan.chosen.backbone, plan.chosen.head)
    check_names(config.backbone, config.head)
    problems, notes = hardware_mismatch(plan, device)
    if problems and not force:
        raise OptionError(f"{problems[0]}; make a plan here (lofi train --auto, or lofi plan), or give --force "
                          "to train this plan anyway")
    for message in [*problems, *notes, *batchnorm_notes(config)] if notify is not None else ():
        notify(message)


def batchnorm_notes(config: TrainConfig) -> list[str]:
    """A random-init encoder whose BatchNorm statistics the plan keeps (partly) fixed
    learns poorly (docs/synthetic.md): say so, and how to plan for it."""
    from lofi.train.config import encoder_bn_mode

    mode = encoder_bn_mode(config)
    if config.pretrained is not None or config.baseline or mode == "train":
        return []
    return [f"the encoder starts from random weights but trains with BatchNorm {mode} (the plan's); a random "
            "encoder needs trained BatchNorm: plan with --batchnorm trained, or give --pretrained"]


def check_names(backbone: str, head: str) -> None:
    """The plan's encoder and head are in this lofi's registries."""
    from lofi.models.encoders import ENCODERS
    from lofi.models.heads import HEADS

    for what, name, known in (("encoder", backbone, ENCODERS), ("head", head, HEADS)):
        if name not in known:
            raise OptionError(f"unknown {what} {name!r} in the plan; this lofi has {', '.join(sorted(known))}")


def hardware_mismatch(plan: Plan, device: torch.device) -> tuple[list[str], list[str]]:
    """(refusals, warnings) comparing the plan's hardware with what `device` is."""
    hardware = plan.hardware
    wanted = f"{plan.gpus * plan.nodes} x {hardware.display_name}"
    if hardware.kind == "gpu" and device.type != "cuda":
        return [f"the plan is for {wanted} and this machine has no CUDA GPU"], []
    if hardware.kind == "cpu":
        if device.type == "cuda":
            return [], [f"the plan was made for the CPU; training on {torch.cuda.get_device_name(device)} instead"]
        return [], []
    found = torch.cuda.device_count()
    if plan.gpus > found:
        return [f"the plan is for {wanted} and this machine has {found} GPU(s)"], []
    properties = torch.cuda.get_device_properties(device)
    if properties.total_memory < hardware.memory_bytes * 0.98:
        return [f"the plan is for {hardware.display_name} ({hardware.memory_bytes / GIB:.0f} GiB) and this "
                f"GPU, {properties.name}, has {properties.total_memory / GIB:.0f} GiB"], []
    if hardware.display_name.lower() not in properties.name.lower() and hardware.name.lower() not in properties.name.lower():
        return [], [f"the plan is for {hardware.display_name}; training on {properties.name} (as much memory, "
                    "other speed)"]
    return [], []
