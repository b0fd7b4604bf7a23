"""`lofi gpus`: what NVML sees here, mapped to hardware profiles, and the profiles known."""

from __future__ import annotations

import click


@click.command()
@click.option("--profiles/--no-profiles", "show_profiles", default=True, show_default=True,
              help="Also list the hardware profiles `lofi plan --gpu NAME` knows.")
def gpus(show_profiles: bool) -> None:
    """Show the GPUs visible here (NVML) and the profile each maps to."""
    from rich import box
    from rich.table import Table

    from lofi.cli.console import console
    from planner.hardware.nvml import detect_gpus
    from planner.hardware.profiles import list_profiles

    profiles = list_profiles()
    detection = detect_gpus(profiles)
    if not detection.gpus:
        console.print(f"[yellow]No GPU visible here:[/] {detection.reason}.", highlight=False)
        console.print("`lofi plan` plans for v100-32gb (the paper's hardware) unless you give --gpu NAME.", highlight=False)
    else:
        table = Table(title=f"GPUs visible here (driver {detection.driver})", title_justify="left")
        for column in ("#", "name", "memory used / total", "profile"):
            table.add_column(column, justify="right" if column == "#" else "left")
        for gpu in detection.gpus:
            f = gpu.figures
            profile = gpu.matched or f"{gpu.profile.name} (from NVML's figures: {gpu.profile.fp32_tflops} fp32 TFLOPS)"
            table.add_row(str(f.index), f.name, f"{f.memory_used / 2**30:.1f} / {f.memory_total / 2**30:.1f} GiB", profile)
        console.print(table)
    if show_profiles:
        table = Table(title="Hardware profiles (profiles/gpus)", title_justify="left", box=box.SIMPLE_HEAD)
        for column in ("name", "memory", "fp32", "fp16", "bf16", "bandwidth", "$/h"):
            table.add_column(column, justify="left" if column == "name" else "right", no_wrap=True)
        for p in profiles:
            memory = f"{p.memory_bytes / 2**30:.1f} GiB" + (" free" if p.kind == "cpu" else "")
            table.add_row(
                p.name, memory, f"{p.fp32_tflops:g}", f"{p.fp16_tflops:g}",
                f"{p.bf16_tflops:g}" if p.bf16_tflops else "–", f"{p.bandwidth_gbps:g} GB/s",
                f"{p.hourly_usd:.2f}" if p.hourly_usd else "–",
            )
        console.print(table)
        console.print("[dim]Throughput in TFLOPS, dense (no sparsity); sources in each profile file.[/]")
