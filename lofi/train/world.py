"""The plan against the world it runs in: GPUs per node and nodes must match torchrun's
(`--nproc-per-node`, `--nnodes`); a run resumed under another world size keeps its
global batch by re-deriving batch per GPU and accumulation for the new world."""

from __future__ import annotations

from dataclasses import replace

from lofi.errors import OptionError
from planner.candidate import Candidate
from planner.plan_file import Plan


def check_world(plan: Plan, gpus_per_node: int, nodes: int) -> None:
    """A clear error when the plan was made for another world than this one."""
    if plan.gpus * plan.nodes != gpus_per_node * nodes or plan.nodes != nodes:
        raise OptionError(
            f"the plan is for {plan.gpus} GPU(s) x {plan.nodes} node(s) but this run has {gpus_per_node} process(es) "
            f"per node x {nodes} node(s); use --gpus {plan.gpus} on one node, or torchrun --nnodes {plan.nodes} "
            f"--nproc-per-node {plan.gpus}, or plan again with lofi plan --gpus {gpus_per_node} --nodes {nodes}")


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
    if plan.gpus == gpus_per_node and plan.nodes == nodes:
        return plan
    chosen = for_world(plan.chosen, gpus_per_node, nodes)
    if chosen is None:
        raise OptionError(
            f"the run's global batch of {plan.chosen.global_batch} cannot be split over {gpus_per_node * nodes} "
            f"process(es); resume with --gpus {plan.gpus * plan.nodes}")
    entries = []
    for entry in plan.candidates:
        moved = for_world(entry.candidate, gpus_per_node, nodes)
        if moved is not None:
            entries.append(replace(entry, candidate=moved))
    return replace(plan, gpus=gpus_per_node, nodes=nodes, chosen=chosen, candidates=tuple(entries))
