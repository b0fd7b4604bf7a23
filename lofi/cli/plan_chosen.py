"""The chosen candidate of a budget report, in a panel: why it won, its quality, its
memory by category against the budget, its time per epoch, what a measurement found."""

from __future__ import annotations

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from lofi.cli.plan_report import Report
from lofi.cli.plan_table import BAR_WIDTH, GIB, fidelity_name
from planner.choose import hours
from planner.estimate_types import MemoryEstimate, TimeEstimate
from planner.plan import PlanEntry

_HEADS = {"gtad": "G-TAD", "bmn": "BMN"}


def chosen_panel(report: Report, entry: PlanEntry) -> Panel:
    """The chosen candidate: why, its quality, memory by category, time, measurement."""
    c = entry.candidate
    unit = "GPU" if report.scope.hardware.kind == "gpu" else "process"
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
    if memory.host_pinned:
        table.add_row(Text("pinned host memory", style="italic"), f"{memory.host_pinned / GIB:.2f}",
                      Text("offloaded activations, in the host's RAM (not in the total)", style="grey70"))
    table.add_row(
        Text("total per " + ("GPU" if report.scope.hardware.kind == "gpu" else "process"), style="bold"),
        Text(f"{memory.total / GIB:.2f}", style="bold"),
        Text(f"of {report.scope.usable_bytes / GIB:.1f} usable ({report.scope.hardware.memory_bytes / GIB:.1f} capacity)"),
    )
    return table


def _time_line(time: TimeEstimate | None, report: Report) -> Text:
    if time is None:
        return Text("Time: not estimated")
    text = f"Time: {hours(time.seconds_per_epoch)} per epoch of {time.videos_per_epoch:,} videos ({time.seconds_per_step:.2f} s per optimizer step)"
    if time.cost_per_epoch_usd is not None:
        text += f", about ${time.cost_per_epoch_usd:,.2f} per epoch"
    if time.host_transfer_seconds:
        text += f"; {time.host_transfer_seconds:.2f} s of each step copies offloaded activations over the host link"
    return Text(text)
