"""The candidate grid: every training configuration the planner estimates and ranks.

Default (planner issue, "Candidates"): the paper's fidelities (full 100/224, S 100/112,
T 25/224, ST 50/158, low budget 25/112, and the C-LoFi cycle S -> T -> ST) x tsm_r18/r34/
r50 x batch per GPU {1, 2, 4, 8, 16} x precision x checkpointing (none, block, chunk:4; the
planner adds the `blocks:N` its search estimates, planner/search.py), at the paper's global
batch of 16 (PAPER.md, "LoFi optimisation") reached by gradient accumulation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from planner import checkpointing
from planner.candidate import OPTIMIZERS, PRECISIONS, Candidate
from planner.errors import FieldError, PlannerError
from planner.fidelity import C_LOFI_CYCLE, NAMED_FIDELITIES, Fidelity
from planner.hardware import GpuProfile

PAPER_FIDELITIES: tuple[Fidelity, ...] = tuple(NAMED_FIDELITIES.values())  # full, S, T, ST, low
PAPER_CYCLES: tuple[tuple[Fidelity, ...], ...] = (C_LOFI_CYCLE,)
BACKBONES: tuple[str, ...] = ("tsm_r18", "tsm_r34", "tsm_r50")
HEADS: tuple[str, ...] = ("gtad", "bmn")
BATCHES: tuple[int, ...] = (1, 2, 4, 8, 16)
CHECKPOINTING: tuple[str, ...] = ("none", "block", "chunk:4")  # + blocks:N and offload where none does not fit (planner.search)
PAPER_GLOBAL_BATCH = 16  # PAPER.md: "global batch 16 for every configuration"
CYCLE_NAME = "C"  # `--fidelity C` selects the C-LoFi cycle


@dataclass(frozen=True)
class GridSpec:
    """What to enumerate. `precisions=None` means every precision the target supports
    (fp32, fp16, and bf16 where the GPU has it; fp32 only on the cpu profile)."""

    fidelities: tuple[Fidelity, ...] = PAPER_FIDELITIES
    cycles: tuple[tuple[Fidelity, ...], ...] = PAPER_CYCLES
    backbones: tuple[str, ...] = BACKBONES
    head: str = "gtad"
    batches: tuple[int, ...] = BATCHES
    precisions: tuple[str, ...] | None = None
    checkpointing: tuple[str, ...] = CHECKPOINTING
    global_batch: int = PAPER_GLOBAL_BATCH
    accumulation: bool = True  # False: batch per GPU x world size must equal the global batch
    gpus: int = 1  # per node
    nodes: int = 1
    optimizer: str = "sgd"
    expandable_segments: tuple[bool, ...] = (False,)  # allocator settings to try (True: expandable segments)
    batchnorm: str = "frozen"  # planner.candidate.BATCHNORM: what the trainer will do with BatchNorm
    search_blocks: bool = True  # where none does not fit: also the smallest fitting blocks:N (block fits) and offload (planner.search)


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
        raise PlannerError(_no_batch_message(spec, world))
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
    trs: Sequence[int] = (), srs: Sequence[int] = (), names: Sequence[str] = ()
) -> tuple[tuple[Fidelity, ...], tuple[tuple[Fidelity, ...], ...]]:
    """(fidelities, cycles) from `--tr`, `--sr` and `--fidelity NAME`.

    Nothing given: the paper's fidelities and the C-LoFi cycle. `--tr`/`--sr`: every
    TR x SR pair; the one not given takes the paper's values (TR 100, 50, 25; SR 224,
    158, 112). `--fidelity full|S|T|ST|low|C` adds the named ones (C: the cycle)."""
    if not trs and not srs and not names:
        return PAPER_FIDELITIES, PAPER_CYCLES
    fidelities: list[Fidelity] = []
    cycles: list[tuple[Fidelity, ...]] = []
    for name in names:
        if name == CYCLE_NAME:
            cycles.append(C_LOFI_CYCLE)
        elif name in NAMED_FIDELITIES:
            fidelities.append(NAMED_FIDELITIES[name])
        else:
            known = ", ".join([*NAMED_FIDELITIES, CYCLE_NAME])
            raise FieldError("fidelity", f"unknown name {name!r}; known: {known}")
    if trs or srs:
        tr_values = list(trs) or sorted({f.tr for f in PAPER_FIDELITIES}, reverse=True)
        sr_values = list(srs) or sorted({f.sr for f in PAPER_FIDELITIES}, reverse=True)
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
    if spec.head not in HEADS:
        raise FieldError("head", f"unknown head {spec.head!r}; choose from {', '.join(HEADS)}")
    if spec.optimizer not in OPTIMIZERS:
        raise FieldError("optimizer", f"unknown optimizer {spec.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    for backbone in spec.backbones:
        if backbone not in BACKBONES:
            raise FieldError("backbones", f"unknown backbone {backbone!r}; choose from {', '.join(BACKBONES)}")
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


def _no_batch_message(spec: GridSpec, world: int) -> str:
    batches = ", ".join(map(str, spec.batches))
    if spec.global_batch % world:
        return f"global batch {spec.global_batch} cannot be split evenly over {world} GPUs"
    need = spec.global_batch // world
    if not spec.accumulation:
        return (
            f"no batch per GPU in {{{batches}}} reaches global batch {spec.global_batch} on {world} GPU(s) "
            f"without accumulation: that needs --batch {need}"
        )
    return (
        f"no batch per GPU in {{{batches}}} divides global batch {spec.global_batch} over {world} GPU(s) "
        f"(batch per GPU x accumulation steps must be {need})"
    )
