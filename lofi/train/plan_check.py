"""The plan against the place it trains in, before anything is trained.

- Names and hardware: its encoder and head exist here, and the hardware it was made for
  is the hardware found. A plan for a GPU run on a CPU, on a GPU with less memory, or
  over more devices than there are, is refused without `--force`; a milder mismatch
  (another GPU model with as much memory, a CPU plan on a GPU) is a warning.
- The world: GPUs per node and nodes must match torchrun's (`--nproc-per-node`,
  `--nnodes`); a run resumed under another world size keeps its global batch by
  re-deriving batch per GPU and accumulation for the new world.
- The allocator: PyTorch's caching-allocator settings the plan trains with
  (`PYTORCH_CUDA_ALLOC_CONF`), set before CUDA starts: the allocator reads the variable
  once, when it is first used."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace

import torch

from lofi.errors import OptionError
from lofi.train.config import TrainConfig, encoder_bn_mode
from planner.candidate import Candidate
from planner.plan import Plan

GIB = 2**30
ALLOC_ENV = "PYTORCH_CUDA_ALLOC_CONF"


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
    hardware = plan.scope.hardware
    wanted = f"{plan.scope.gpus * plan.scope.nodes} x {hardware.display_name}"
    if hardware.kind == "gpu" and device.type != "cuda":
        return [f"the plan is for {wanted} and this machine has no CUDA GPU"], []
    if hardware.kind == "cpu":
        if device.type == "cuda":
            return [], [f"the plan was made for the CPU; training on {torch.cuda.get_device_name(device)} instead"]
        return [], []
    found = torch.cuda.device_count()
    if plan.scope.gpus > found:
        return [f"the plan is for {wanted} and this machine has {found} GPU(s)"], []
    properties = torch.cuda.get_device_properties(device)
    if properties.total_memory < hardware.memory_bytes * 0.98:
        return [f"the plan is for {hardware.display_name} ({hardware.memory_bytes / GIB:.0f} GiB) and this "
                f"GPU, {properties.name}, has {properties.total_memory / GIB:.0f} GiB"], []
    if hardware.display_name.lower() not in properties.name.lower() and hardware.name.lower() not in properties.name.lower():
        return [], [f"the plan is for {hardware.display_name}; training on {properties.name} (as much memory, "
                    "other speed)"]
    return [], []


# --- the world -------------------------------------------------------------------------


def check_world(plan: Plan, gpus_per_node: int, nodes: int) -> None:
    """A clear error when the plan was made for another world than this one."""
    if plan.scope.gpus * plan.scope.nodes != gpus_per_node * nodes or plan.scope.nodes != nodes:
        raise OptionError(
            f"the plan is for {plan.scope.gpus} GPU(s) x {plan.scope.nodes} node(s) but this run has {gpus_per_node} process(es) "
            f"per node x {nodes} node(s); use --gpus {plan.scope.gpus} on one node, or torchrun --nnodes {plan.scope.nodes} "
            f"--nproc-per-node {plan.scope.gpus}, or plan again with lofi plan --gpus {gpus_per_node} --nodes {nodes}")


def for_world(candidate: Candidate, gpus_per_node: int, nodes: int) -> Candidate | None:
    """`candidate` with the same global batch on `gpus_per_node` x `nodes` processes:
    its batch per GPU where the global batch divides evenly, else the largest smaller
    one that does (never more memory per GPU than planned); None when none does."""
    world = gpus_per_node * nodes
    total = candidate.global_batch
    for batch in range(candidate.batch_per_gpu, 0, -1):
        if total % (batch * world) == 0:
            return replace(candidate, batch_per_gpu=batch, gpus=gpus_per_node, nodes=nodes,
                           accumulation=total // (batch * world))
    return None


def plan_for_world(plan: Plan, gpus_per_node: int, nodes: int) -> Plan:
    """The stored plan of a resumed run, re-derived for this world (unchanged when it
    matches); its candidates that cannot keep the global batch are dropped."""
    if plan.scope.gpus == gpus_per_node and plan.scope.nodes == nodes:
        return plan
    chosen = for_world(plan.chosen, gpus_per_node, nodes)
    if chosen is None:
        raise OptionError(
            f"the run's global batch of {plan.chosen.global_batch} cannot be split over {gpus_per_node * nodes} "
            f"process(es); resume with --gpus {plan.scope.gpus * plan.scope.nodes}")
    entries = []
    for entry in plan.candidates:
        moved = for_world(entry.candidate, gpus_per_node, nodes)
        if moved is not None:
            entries.append(replace(entry, candidate=moved))
    scope = replace(plan.scope, gpus=gpus_per_node, nodes=nodes)
    return replace(plan, scope=scope, chosen=chosen, candidates=tuple(entries))


# --- the allocator ---------------------------------------------------------------------


def merged_setting(current: str | None, setting: str) -> str:
    """`setting` added to the comma-separated options already in `current` (a key given
    there is replaced)."""
    key = setting.partition(":")[0]
    kept = [part for part in (current or "").split(",") if part.strip() and part.partition(":")[0].strip() != key]
    return ",".join([*kept, setting])


def apply_alloc_conf(setting: str | None) -> str | None:
    """Make this process's allocator use `setting` (e.g. "expandable_segments:True"; None:
    leave it alone). Before CUDA starts the environment variable is enough (and child
    processes inherit it); once it has started, the allocator is told directly. Returns
    the PYTORCH_CUDA_ALLOC_CONF in effect."""
    if setting is None:
        return os.environ.get(ALLOC_ENV)
    value = merged_setting(os.environ.get(ALLOC_ENV), setting)
    os.environ[ALLOC_ENV] = value
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.memory._set_allocator_settings(setting)
    return value
