"""The candidate grid: every training configuration the planner estimates and ranks.

Fidelities (and cycles) x backbones x batch per GPU {1, 2, 4, 8, 16} x precision x
checkpointing (none, block, chunk:4; the planner adds the `blocks:N` and `offload` its
search estimates where none does not fit, planner/search.py), at the workload's global
batch reached by gradient accumulation. The fidelities, cycles, backbones, head and
global batch not given come from the workload's axes (`planner.axes.WorkloadAxes`), and
the names given must be among them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from planner import checkpointing
from planner.axes import WorkloadAxes
from planner.candidate import OPTIMIZERS, PRECISIONS, Candidate
from planner.errors import FieldError, PlannerError
from planner.fidelity import Fidelity
from planner.hardware.gpu_profile import GpuProfile

BATCHES: tuple[int, ...] = (1, 2, 4, 8, 16)
CHECKPOINTING: tuple[str, ...] = ("none", "block", "chunk:4")  # + blocks:N and offload where none does not fit (planner.search)


@dataclass(frozen=True)
class GridSpec:
    """What to enumerate. `precisions=None` means every precision the target supports
    (fp32, fp16, and bf16 where the GPU has it; fp32 only on the cpu profile). The
    fields left None take the values of `axes` (its default grid, its first head, its
    global batch)."""

    axes: WorkloadAxes
    fidelities: tuple[Fidelity, ...] = None  # type: ignore[assignment]
    cycles: tuple[tuple[Fidelity, ...], ...] = None  # type: ignore[assignment]
    backbones: tuple[str, ...] = None  # type: ignore[assignment]
    head: str = None  # type: ignore[assignment]
    batches: tuple[int, ...] = BATCHES
    precisions: tuple[str, ...] | None = None
    checkpointing: tuple[str, ...] = CHECKPOINTING
    global_batch: int = None  # type: ignore[assignment]
    accumulation: bool = True  # False: batch per GPU x world size must equal the global batch
    gpus: int = 1  # per node
    nodes: int = 1
    optimizer: str = "sgd"
    expandable_segments: tuple[bool, ...] = (False,)  # allocator settings to try (True: expandable segments)
    batchnorm: str = "frozen"  # planner.candidate.BATCHNORM: what the trainer will do with BatchNorm
    search_blocks: bool = True  # where none does not fit: also the smallest fitting blocks:N (block fits) and offload (planner.search)

    def __post_init__(self) -> None:
        defaults = {"fidelities": self.axes.fidelities, "cycles": self.axes.cycles, "backbones": self.axes.backbones,
                    "head": self.axes.default_head, "global_batch": self.axes.global_batch}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)


def precisions_for(profile: GpuProfile, requested: Sequence[str] | None) -> tuple[str, ...]:
    """The precisions to try on `profile`; an explicit bf16 on a GPU without it is an error."""
    if requested is None:
        if profile.kind == "cpu":
            return ("fp32",)
        return ("fp32", "fp16", "bf16") if profile.supports_bf16 else ("fp32", "fp16")
    for precision in requested:
        if precision not in PRECISIONS:
            raise FieldError("precisions", f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
        if precision == "bf16" and not profile.supports_bf16:
            raise FieldError("precisions", f"{profile.name} ({profile.display_name}) has no bf16; use fp16 or fp32",
                             value="bf16")
    return tuple(dict.fromkeys(requested))


def policies_for(profile: GpuProfile, requested: Sequence[str]) -> tuple[str, ...]:
    """The checkpointing policies to try on `profile`: offload moves activations from the
    device to host memory, which a CPU target has as its only memory, so the cpu profile
    skips it (an explicit request alone is an error)."""
    policies = tuple(dict.fromkeys(requested))
    if profile.kind != "cpu":
        return policies
    kept = tuple(p for p in policies if not checkpointing.parse(p).offload)
    if policies and not kept:
        raise FieldError("checkpointing", f"offload moves activations to host memory; on {profile.name} that is the "
                         "memory they are in already: choose none, block or chunk:K", value=", ".join(policies))
    return kept


def accumulation_steps(batch_per_gpu: int, world_size: int, global_batch: int, allow: bool) -> int | None:
    """Steps to reach `global_batch`, or None where this batch size cannot reach it exactly."""
    per_step = batch_per_gpu * world_size
    if global_batch % per_step:
        return None
    steps = global_batch // per_step
    return steps if allow or steps == 1 else None


def build_grid(spec: GridSpec, profile: GpuProfile) -> list[Candidate]:
    """Every candidate of `spec` that can run on `profile` at the global batch."""
    _validate(spec)
    precisions = precisions_for(profile, spec.precisions)
    policies = policies_for(profile, spec.checkpointing)
    world = spec.gpus * spec.nodes
    trainings: list[tuple[Fidelity | None, tuple[Fidelity, ...] | None]] = [(f, None) for f in dict.fromkeys(spec.fidelities)]
    trainings += [(None, cycle) for cycle in dict.fromkeys(spec.cycles)]
    steps = {b: accumulation_steps(b, world, spec.global_batch, spec.accumulation) for b in dict.fromkeys(spec.batches)}
    usable = {b: n for b, n in steps.items() if n is not None}
    if not usable:
        raise _no_batch_error(spec, world)
    candidates = [
        Candidate(
            backbone=backbone,
            head=spec.head,
            batch_per_gpu=batch,
            fidelity=fidelity,
            cycle=cycle,
            gpus=spec.gpus,
            nodes=spec.nodes,
            accumulation=accumulation,
            precision=precision,
            checkpointing=policy,
            optimizer=spec.optimizer,
            expandable_segments=expandable,
            batchnorm=spec.batchnorm,
        )
        for fidelity, cycle in trainings
        for backbone in dict.fromkeys(spec.backbones)
        for batch, accumulation in usable.items()
        for precision in precisions
        for policy in policies
        for expandable in dict.fromkeys(spec.expandable_segments)
    ]
    if not candidates:
        raise PlannerError("the candidate grid is empty: give at least one fidelity, backbone and checkpointing policy")
    return candidates


def select_fidelities(
    axes: WorkloadAxes, trs: Sequence[int] = (), srs: Sequence[int] = (), names: Sequence[str] = ()
) -> tuple[tuple[Fidelity, ...], tuple[tuple[Fidelity, ...], ...]]:
    """(fidelities, cycles) from `tr`, `sr` and fidelity names, among the workload's axes.

    Nothing given: the axes' default fidelities and cycles. `trs`/`srs`: every TR x SR
    pair; the one not given takes the values of the default fidelities. `names` adds the
    axes' named fidelities and cycles."""
    if not trs and not srs and not names:
        return axes.fidelities, axes.cycles
    named, named_cycles = dict(axes.named_fidelities), dict(axes.named_cycles)
    fidelities: list[Fidelity] = []
    cycles: list[tuple[Fidelity, ...]] = []
    for name in names:
        if name in named_cycles:
            cycles.append(named_cycles[name])
        elif name in named:
            fidelities.append(named[name])
        else:
            known = ", ".join([*named, *named_cycles])
            raise FieldError("fidelity", f"unknown name {name!r}; known: {known}")
    if trs or srs:
        tr_values = list(trs) or sorted({f.tr for f in axes.fidelities}, reverse=True)
        sr_values = list(srs) or sorted({f.sr for f in axes.fidelities}, reverse=True)
        for tr in tr_values:
            for sr in sr_values:
                try:
                    fidelities.append(Fidelity(tr, sr))
                except ValueError as error:
                    raise FieldError(("tr", "sr"), str(error)) from error
    return tuple(dict.fromkeys(fidelities)), tuple(dict.fromkeys(cycles))


def parse_list(values: Iterable[str], field: str) -> list[str]:
    """`batches` given as '1,2' and '4' -> ['1', '2', '4'] (comma lists and repeated
    values); a FieldError naming `field` (the GridSpec field the values are for)."""
    items = [item.strip() for value in values for item in value.split(",")]
    if any(not item for item in items):
        raise FieldError(field, f"empty item in {list(values)!r}")
    return items


def parse_ints(values: Iterable[str], field: str) -> list[int]:
    """As `parse_list`, each item a whole number >= 1."""
    items = parse_list(values, field)
    try:
        numbers = [int(item) for item in items]
    except ValueError:
        raise FieldError(field, f"expected whole numbers, got {items!r}") from None
    if any(number < 1 for number in numbers):
        raise FieldError(field, f"values must be >= 1, got {numbers!r}")
    return numbers


def _validate(spec: GridSpec) -> None:
    heads, backbones = spec.axes.heads, spec.axes.backbones
    if spec.head not in heads:
        raise FieldError("head", f"unknown head {spec.head!r}; choose from {', '.join(heads)}")
    if spec.optimizer not in OPTIMIZERS:
        raise FieldError("optimizer", f"unknown optimizer {spec.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    for backbone in spec.backbones:
        if backbone not in backbones:
            raise FieldError("backbones", f"unknown backbone {backbone!r}; choose from {', '.join(backbones)}")
    for policy in spec.checkpointing:
        try:
            checkpointing.parse(policy)
        except ValueError as error:
            raise FieldError("checkpointing", str(error)) from error
    for name, value in (("global_batch", spec.global_batch), ("gpus", spec.gpus), ("nodes", spec.nodes)):
        if value < 1:
            raise FieldError(name, f"must be >= 1, got {value}", separator=" ")
    if any(batch < 1 for batch in spec.batches):
        raise FieldError("batches", f"values must be >= 1, got {list(spec.batches)}")


def _no_batch_error(spec: GridSpec, world: int) -> FieldError:
    batches = ", ".join(map(str, spec.batches))
    if spec.global_batch % world:
        return FieldError(("global_batch", "gpus"),
                          f"global batch {spec.global_batch} cannot be split evenly over {world} GPUs")
    need = spec.global_batch // world
    if not spec.accumulation:
        return FieldError("batches", f"no batch per GPU in {{{batches}}} reaches global batch {spec.global_batch} on "
                          f"{world} GPU(s) without accumulation", suggest=("batches", str(need)))
    return FieldError("batches", f"no batch per GPU in {{{batches}}} divides global batch {spec.global_batch} over "
                      f"{world} GPU(s) (batch per GPU x accumulation steps must be {need})")
