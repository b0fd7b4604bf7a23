"""How much of a LoFi training step's allocated peak is the TAL head's: the planner's own
trace of the step (planner/tracing/step.py on meta tensors, the workload lofi/plan_workload.py),
each allocation attributed to the part of the step that made it:

    encoder forward   events before the head starts (module pre-hook on `model.head`)
    head forward      head + loss, up to backward
    head backward     from backward to the moment the encoder's output gets its gradient
    encoder backward  the rest (recomputation under `block` included)

Parameters, gradients and optimizer state are their own categories; the rest is
activations (inputs, temporaries and workspaces counted as activations). At the
step's allocated peak (one traced step, no allocator rounding) the script prints
the peak, the head's share of it (head forward + head backward blocks alive there),
where the peak falls (phase) and the largest live block's owner.

    python benchmarks/head_memory.py [--head gtad] [--backbones tsm_r50,tsm_r18]
        [--fidelities 100/224,100/112] [--batches 1,4,16] [--precisions fp16,fp32]
        [--policies none,block]

Traces are made fresh each time (about 1-10 s each on 2 cores); batch sizes other than
2 and 3 are traced directly, not extrapolated.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import numpy as np
import torch

from lofi.plan_workload import LofiWorkload
from planner.cost.allocator import ALLOC
from planner.fidelity import Fidelity
from planner.tracing.recorder import ACTIVATION, CATEGORY_NAMES, INPUT, WORKSPACE, active_recorder
from planner.tracing.step import Tracer
from planner.workload import ModelSpec, StepSpec

MiB = 1 << 20
PARTS = ("encoder forward", "head forward", "head backward", "encoder backward")


@dataclass(frozen=True)
class HeadShare:
    peak: int  # allocated peak of the traced step, bytes
    head: int  # bytes of head-made activation blocks alive at the peak
    by_part: dict[str, int]  # activation bytes alive at the peak, by the part that allocated them
    by_category: dict[str, int]  # bytes alive at the peak by category
    phase: str  # the step phase the peak falls in
    largest: tuple[str, int]  # (part or category, bytes) of the largest block alive at the peak

    @property
    def share(self) -> float:
        return self.head / self.peak


class _Boundaries:
    """Event indices where the head starts and where the encoder's output gets its
    gradient, taken from the active recorder by hooks on the traced model."""

    def __init__(self) -> None:
        self.head_start: int | None = None
        self.head_done: int | None = None

    def start(self, module, args) -> None:
        self.head_start = active_recorder().event_count

    def watch(self, module, args, output) -> None:
        if output.requires_grad:
            output.register_hook(self.done)

    def done(self, grad) -> None:
        self.head_done = active_recorder().event_count


@dataclass(frozen=True)
class _HookedWorkload(LofiWorkload):
    """The LoFi workload, its models built with the hooks of `bounds`."""

    bounds: _Boundaries = field(default_factory=_Boundaries)

    def build_model(self, spec: ModelSpec, device: torch.device) -> torch.nn.Module:
        model = super().build_model(spec, device)
        model.head.register_forward_pre_hook(self.bounds.start)
        model.encoder.register_forward_hook(self.bounds.watch)
        return model


def head_share(tracer: Tracer, step: StepSpec, batch: int) -> HeadShare:
    """Trace one step of `step` at `batch` (tracer of a `_HookedWorkload`) and attribute
    its allocated peak."""
    bounds = tracer.workload.bounds
    bounds.head_start = bounds.head_done = None
    trace = tracer.trace(step, batch)
    backward = trace.mark("backward")
    cuts = (bounds.head_start, backward, bounds.head_done)
    if None in cuts:
        raise RuntimeError("the head's boundaries were not seen while tracing")
    sizes = np.where(trace.ops == ALLOC, trace.sizes, -_alloc_sizes(trace))
    live = np.cumsum(sizes)
    at = int(np.argmax(live))
    alive = _alive_at(trace, at)
    part_of = {b: int(np.searchsorted(cuts, i, side="right")) for b, i in alive.items()}
    by_part = dict.fromkeys(PARTS, 0)
    by_category = dict.fromkeys(CATEGORY_NAMES, 0)
    largest = ("", 0)
    for block, index in alive.items():
        size, category = int(trace.sizes[index]), int(trace.categories[index])
        by_category[CATEGORY_NAMES[category]] += size
        owner = CATEGORY_NAMES[category]
        if category in (ACTIVATION, INPUT, WORKSPACE):
            owner = PARTS[part_of[block]]
            by_part[owner] += size
        if size > largest[1]:
            largest = (owner, size)
    phase = next(label for label, index in reversed(trace.marks) if index <= at)
    head = by_part["head forward"] + by_part["head backward"]
    return HeadShare(int(live[at]), head, by_part, by_category, phase, largest)


def _alloc_sizes(trace) -> np.ndarray:
    """Each event's block size (frees get their block's allocation size)."""
    size_of: dict[int, int] = {}
    out = np.zeros(len(trace), dtype=np.int64)
    for i, (op, block, size) in enumerate(zip(trace.ops, trace.ids, trace.sizes)):
        if op == ALLOC:
            size_of[int(block)] = int(size)
        else:
            out[i] = size_of.get(int(block), 0)
    return np.where(trace.ops == ALLOC, 0, out)


def _alive_at(trace, at: int) -> dict[int, int]:
    """Block id -> index of its allocation event, for blocks alive after event `at`."""
    alive: dict[int, int] = {}
    for i in range(at + 1):
        block = int(trace.ids[i])
        if trace.ops[i] == ALLOC:
            alive[block] = i
        else:
            alive.pop(block, None)
    return alive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", default="gtad", choices=("gtad", "bmn"))
    parser.add_argument("--backbones", default="tsm_r50,tsm_r18")
    parser.add_argument("--fidelities", default="100/224,100/112")
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--precisions", default="fp16,fp32")
    parser.add_argument("--policies", default="none,block")
    args = parser.parse_args()
    torch.set_num_threads(1)
    fidelities = [Fidelity(*(int(v) for v in text.split("/"))) for text in args.fidelities.split(",")]
    print(f"head {args.head}: share of the traced step's allocated peak (one step, no allocator rounding)")
    print(f"{'backbone':>8} {'TR/SR':>7} {'policy':>12} {'prec':>4} {'batch':>5} {'peak MiB':>9} "
          f"{'head MiB':>9} {'head %':>6}  peak phase, largest live block")
    workload = _HookedWorkload()
    for backbone in args.backbones.split(","):
        for fidelity in fidelities:
            for policy in args.policies.split(","):
                tracer = Tracer(workload)
                for precision in args.precisions.split(","):
                    for batch in (int(b) for b in args.batches.split(",")):
                        spec = ModelSpec(backbone, args.head, fidelity, policy)
                        result = head_share(tracer, StepSpec(spec, precision), batch)
                        owner, size = result.largest
                        print(f"{backbone:>8} {fidelity.label():>7} {policy:>12} {precision:>4} {batch:>5} "
                              f"{result.peak / MiB:>9.0f} {result.head / MiB:>9.0f} {100 * result.share:>5.1f}%  "
                              f"{result.phase}, {owner} {size / MiB:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
