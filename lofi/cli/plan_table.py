"""The candidates of a budget report: the header (target, budget, work) and one row per
candidate, its memory drawn as a bar against the GPU's capacity with a tick where the
margin starts."""

from __future__ import annotations

from rich import box
from rich.table import Table
from rich.text import Text

from lofi.cli.plan_report import Report
from planner.candidate import Candidate
from planner.choose import hours
from planner.estimate_types import MemoryEstimate
from lofi.fidelities import C_LOFI_CYCLE, NAMED_FIDELITIES
from planner.plan import PlanEntry

GIB = 2**30
BAR_WIDTH = 10
_NAMES = {fidelity: name for name, fidelity in NAMED_FIDELITIES.items()}


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


def header(report: Report) -> Text:
    hw = report.scope.hardware
    world = report.scope.gpus * report.scope.nodes
    nodes = f" on {report.scope.nodes} nodes" if report.scope.nodes > 1 else ""
    origin = "detected here" if hw.detected else "profile"
    text = Text()
    text.append("Target  ", style="bold")
    text.append(f"{world} × {hw.display_name} ({hw.name}, {origin}){nodes}\n")
    text.append("Budget  ", style="bold")
    text.append(
        f"{report.scope.usable_bytes / GIB:.1f} GiB per {'GPU' if hw.kind == 'gpu' else 'process'} = "
        f"{hw.memory_bytes / GIB:.1f} GiB × (1 − {report.scope.margin:.0%} margin)\n"
    )
    text.append("Work    ", style="bold")
    text.append(f"global batch {report.scope.global_batch}; an epoch is {report.scope.videos_per_epoch:,} videos ({report.scope.dataset})")
    return text


def candidates_table(report: Report) -> Table:
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
        memory = memory_bar(entry.total_bytes, report.scope.usable_bytes, report.scope.hardware.memory_bytes)
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


