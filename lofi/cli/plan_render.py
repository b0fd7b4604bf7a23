"""The budget report of `lofi plan` and `lofi report`: gather the numbers (gather_report),
then render them with rich (render_report). Memory is drawn as a bar against the GPU's
capacity, with a tick where the margin starts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from planner.candidate import Candidate
from planner.choose import hours
from planner.estimates import MemoryEstimate, TimeEstimate
from planner.fidelity import C_LOFI_CYCLE, NAMED_FIDELITIES
from planner.plan_file import Hardware, Plan, PlanEntry

GIB = 2**30
BAR_WIDTH = 10
_NAMES = {fidelity: name for name, fidelity in NAMED_FIDELITIES.items()}
_HEADS = {"gtad": "G-TAD", "bmn": "BMN"}


@dataclass(frozen=True)
class Report:
    hardware: Hardware
    gpus: int
    nodes: int
    margin: float
    usable_bytes: int
    global_batch: int
    videos_per_epoch: int
    dataset: str
    rows: tuple[PlanEntry, ...]  # the rows shown, in rank order
    total_candidates: int
    configurations: int
    show_all: bool
    chosen: PlanEntry | None
    why: str | None
    notices: tuple[str, ...]
    estimates: str  # how the numbers were obtained (estimated / measured, calibration)


def gather_report(
    *,
    hardware: Hardware,
    gpus: int,
    nodes: int,
    margin: float,
    usable_bytes: int,
    global_batch: int,
    videos_per_epoch: int,
    dataset: str,
    entries: Sequence[PlanEntry],
    why: str | None,
    notices: Sequence[str] = (),
    show_all: bool = False,
) -> Report:
    """The rows to show: every candidate (`show_all`), or the best of each configuration
    (backbone x fidelity): its best-ranked fitting candidate, else its smallest."""
    ordered = sorted(entries, key=lambda e: e.rank)
    chosen = next((e for e in ordered if e.fits and e.reason is None), None)
    groups: dict[tuple, list[PlanEntry]] = {}
    for entry in ordered:
        groups.setdefault((entry.candidate.backbone, entry.candidate.fidelities), []).append(entry)
    if show_all:
        rows = ordered
    else:
        best = [next((e for e in group if e.fits), min(group, key=lambda e: e.total_bytes)) for group in groups.values()]
        rows = sorted(best, key=lambda e: e.rank)
    sources = sorted({(e.memory.source, e.memory.calibration) for e in ordered}, key=str)
    estimates = "; ".join(f"{source}" + (f" (calibration: {cal})" if cal else " (no calibration)") for source, cal in sources)
    return Report(
        hardware, gpus, nodes, margin, usable_bytes, global_batch, videos_per_epoch, dataset,
        tuple(rows), len(ordered), len(groups), show_all, chosen, why, tuple(notices), estimates,
    )


def report_from_plan(plan: Plan, show_all: bool = False) -> Report:
    return gather_report(
        hardware=plan.hardware, gpus=plan.gpus, nodes=plan.nodes, margin=plan.margin,
        usable_bytes=plan.usable_bytes, global_batch=plan.global_batch,
        videos_per_epoch=plan.videos_per_epoch, dataset=plan.dataset, entries=plan.candidates,
        why=plan.why, notices=plan.notices, show_all=show_all,
    )


def render_report(report: Report, console: Console) -> None:
    for notice in report.notices:
        console.print(f"[yellow]note:[/] {notice}", highlight=False)
    console.print(_header(report))
    console.print(_table(report))
    plural = "s" if report.configurations > 1 else ""
    shown = "every candidate" if report.show_all else f"the best candidate of each of {report.configurations} configuration{plural}"
    console.print(
        f"[dim]Showing {shown}; {report.total_candidates} candidate{'s' if report.total_candidates > 1 else ''} in all"
        f"{'' if report.show_all else ' (--all shows every one)'}. Memory: {report.estimates}.[/]",
        highlight=False,
    )
    if report.chosen is not None:
        console.print(_winner(report, report.chosen))


def fidelity_name(candidate: Candidate) -> str:
    if candidate.cycle is not None:
        if candidate.cycle == C_LOFI_CYCLE:
            return "C-LoFi"
        return "cycle " + "→".join(_NAMES.get(f, f.label()) for f in candidate.cycle)
    fidelity = candidate.fidelity
    name = _NAMES.get(fidelity)  # type: ignore[arg-type]
    label = fidelity.label() if fidelity.frames_per_snippet == 8 else f"{fidelity.label()}×{fidelity.frames_per_snippet}f"  # type: ignore[union-attr]
    return f"{name} {label}" if name else label


def batch_text(candidate: Candidate) -> str:
    if candidate.accumulation == 1:
        return str(candidate.batch_per_gpu)
    return f"{candidate.batch_per_gpu}×{candidate.accumulation}"


def memory_bar(total: int, usable: int, capacity: int, width: int = BAR_WIDTH) -> Text:
    """█ used, ░ free, ┊ where the margin starts; red and ▶ when over capacity."""
    fits = total <= usable
    filled = min(width, round(width * total / capacity))
    tick = min(width - 1, int(width * usable / capacity))
    text = Text()
    for i in range(width):
        if i < filled:
            text.append("█", style="green" if fits else "red")
        elif i == tick:
            text.append("┊", style="yellow")
        else:
            text.append("░", style="grey50")
    text.append("▶" if total > capacity else " ", style="bold red")
    text.append(f" {total / GIB:5.1f}", style="bold" if fits else "red")
    return text


def allocator_line(memory: MemoryEstimate) -> str:
    """'12.1 / 13.0 / 16.8 · 1 release/step': allocated peak, needed capacity,
    unconstrained reserved peak (GiB) and the cache releases of a steady step."""
    text = (f"{memory.allocated_peak / GIB:.1f} / {memory.needed_capacity / GIB:.1f} / "
            f"{memory.reserved_peak / GIB:.1f}")
    if memory.cache_releases_per_step:
        text += f" · {memory.cache_releases_per_step} release/step"
    return text


def breakdown(memory: MemoryEstimate) -> tuple[int, int, int]:
    """(weights: parameters + gradients + optimizer state, activations, everything else)."""
    weights = memory.parameters + memory.gradients + memory.optimizer_state
    return weights, memory.activations, memory.total - weights - memory.activations


def _header(report: Report) -> Text:
    hw = report.hardware
    world = report.gpus * report.nodes
    nodes = f" on {report.nodes} nodes" if report.nodes > 1 else ""
    origin = "detected here" if hw.detected else "profile"
    text = Text()
    text.append("Target  ", style="bold")
    text.append(f"{world} × {hw.display_name} ({hw.name}, {origin}){nodes}\n")
    text.append("Budget  ", style="bold")
    text.append(
        f"{report.usable_bytes / GIB:.1f} GiB per {'GPU' if hw.kind == 'gpu' else 'process'} = "
        f"{hw.memory_bytes / GIB:.1f} GiB × (1 − {report.margin:.0%} margin)\n"
    )
    text.append("Work    ", style="bold")
    text.append(f"global batch {report.global_batch}; an epoch is {report.videos_per_epoch:,} videos ({report.dataset})")
    return text


def _table(report: Report) -> Table:
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, leading=1)
    table.add_column("#", justify="right")
    table.add_column("candidate", min_width=12)
    table.add_column("memory GiB\nw / act / other\nallocated / needed / reserved", no_wrap=True)
    table.add_column("epoch", justify="right", no_wrap=True)
    table.add_column("verdict", ratio=1, min_width=18)
    for entry in report.rows:
        c = entry.candidate
        candidate = Text(f"{fidelity_name(c)} {c.backbone.removeprefix('tsm_')}\n", style="bold" if entry is report.chosen else "")
        candidate.append(f"{batch_text(c)} {c.precision} {c.checkpointing}", style="grey70")
        if c.expandable_segments:
            candidate.append(" expandable", style="grey70")
        weights, activations, other = breakdown(entry.memory)
        memory = memory_bar(entry.total_bytes, report.usable_bytes, report.hardware.memory_bytes)
        memory.append(f"\n{weights / GIB:.1f} / {activations / GIB:.1f} / {other / GIB:.1f}", style="grey70")
        memory.append("\n" + allocator_line(entry.memory), style="grey70")
        epoch = hours(entry.time.seconds_per_epoch) if entry.time else "–"
        table.add_row(str(entry.rank), candidate, memory, epoch, _verdict(entry))
    return table


def _verdict(entry: PlanEntry) -> Text:
    measured = ""
    if entry.measured is not None:
        measured = " (measured: OOM)" if entry.measured.oom else " (measured)"
    if entry.reason is None and entry.fits:
        return Text("✓ chosen" + measured, style="bold green")
    if not entry.fits:
        return Text("✗ " + (entry.reason or "does not fit") + measured, style="red")
    return Text("fits · " + (entry.reason or "") + measured, style="grey70")


def _winner(report: Report, entry: PlanEntry) -> Panel:
    c = entry.candidate
    unit = "GPU" if report.hardware.kind == "gpu" else "process"
    title = (
        f"{fidelity_name(c)} · {c.backbone} · {_HEADS.get(c.head, c.head)} · batch {c.batch_per_gpu} per {unit}"
        f"{f' × {c.accumulation} accumulation steps' if c.accumulation > 1 else ''} · {c.precision} · "
        f"checkpointing {c.checkpointing} · {c.optimizer}"
        f"{' · PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True' if c.expandable_segments else ''}"
    )
    body: list = [Text(title, style="bold green"), Text(f"Why: {report.why}", style="default")]
    body.append(Text(f"Quality: {entry.quality}"))
    body.append(_memory_table(entry.memory, report))
    body.append(_time_line(entry.time, report))
    if entry.measured is not None:
        m = entry.measured
        measured = "OOM" if m.oom else (
            f"max reserved {(m.max_reserved_bytes or 0) / GIB:.1f} GiB, NVML used {(m.nvml_used_bytes or 0) / GIB:.1f} GiB, "
            f"{m.step_seconds or 0:.2f} s per micro-step on {m.device}"
        )
        body.append(Text(f"Measured: {measured}", style="cyan"))
    return Panel(Group(*body), title="Chosen", title_align="left", border_style="green")


def _memory_table(memory: MemoryEstimate, report: Report) -> Table:
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column("category", no_wrap=True)
    table.add_column("GiB", justify="right", no_wrap=True)
    table.add_column("share", overflow="fold")
    rows = [
        ("parameters", memory.parameters), ("gradients", memory.gradients), ("optimizer state", memory.optimizer_state),
        ("activations at the peak", memory.activations), ("cuBLAS/cuDNN workspace", memory.workspace),
        ("allocator slack (needed − allocated)", memory.allocator_slack), ("CUDA context", memory.context),
        ("DDP buckets", memory.ddp), ("NCCL", memory.nccl),
    ]
    for name, value in rows:
        if value is None:
            continue
        share = round(BAR_WIDTH * 2 * value / max(memory.total, 1))
        table.add_row(name, f"{value / GIB:.2f}", Text("█" * share, style="cyan"))
    releases = memory.cache_releases_per_step
    for name, value, note in (
        ("allocated peak", memory.allocated_peak, "max_memory_allocated"),
        ("needed capacity", memory.needed_capacity, f"decides the fit; {releases} cache release(s)/step"),
        ("reserved, GPU with room", memory.reserved_peak, "max_memory_reserved, no limit"),
    ):
        table.add_row(Text(name, style="italic"), f"{value / GIB:.2f}", Text(note, style="grey70"))
    table.add_row(
        Text("total per " + ("GPU" if report.hardware.kind == "gpu" else "process"), style="bold"),
        Text(f"{memory.total / GIB:.2f}", style="bold"),
        Text(f"of {report.usable_bytes / GIB:.1f} usable ({report.hardware.memory_bytes / GIB:.1f} capacity)"),
    )
    return table


def _time_line(time: TimeEstimate | None, report: Report) -> Text:
    if time is None:
        return Text("Time: not estimated")
    text = f"Time: {hours(time.seconds_per_epoch)} per epoch of {time.videos_per_epoch:,} videos ({time.seconds_per_step:.2f} s per optimizer step)"
    if time.cost_per_epoch_usd is not None:
        text += f", about ${time.cost_per_epoch_usd:,.2f} per epoch"
    return Text(text)
