"""Training-step time of each gradient-checkpointing policy of a video encoder, against
`none`, in one run.

    python benchmarks/checkpointing.py                 # tsm_r18, B=1 TR=8 F=8 SR=112
    python benchmarks/checkpointing.py --threads 1 --policies none,block,chunk:2 --repeats 7

A step is forward + sum loss + backward on random uint8 clips, BatchNorm frozen (the
default). Policies run round-robin (none, block, chunk:K, none, ...) so that load from
other processes on a shared machine hits them alike; the median over the repeats is
reported. Checkpointing recomputes the forward pass once during backward, so the
expected ratio is about (forward + forward + backward) / (forward + backward) ~ 4/3.
On a CPU, `chunk:K` also pays for running the convolutions on K snippets instead of all
of them at once, which costs more the smaller the chunk and the frames (at SR=64 and two
snippets per chunk this alone is ~1.2x); SR=112 (the paper's low spatial fidelity)
keeps that effect small.

Gather, then render: `measure_policies` returns one dict per policy (add columns, e.g. an
estimated memory, by adding keys); `render_table` turns them into a rich table.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass

import click
import torch
from rich.console import Console
from rich.table import Table

from lofi.models.encoders import ENCODERS, VideoEncoder, build_encoder


@dataclass(frozen=True)
class StepSize:
    """One training step's input: (batch, TR, F, 3, SR, SR) uint8 clips."""

    batch: int = 1
    tr: int = 8
    frames: int = 8
    sr: int = 112


def make_clips(size: StepSize, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (size.batch, size.tr, size.frames, 3, size.sr, size.sr)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)  # (B, TR, F, 3, SR, SR)


def train_step_seconds(encoder: VideoEncoder, clips: torch.Tensor) -> tuple[float, float]:
    """(wall, process CPU) seconds of forward + sum loss + backward. CPU time is the
    steadier of the two on a machine shared with other work (use --threads 1)."""
    encoder.zero_grad(set_to_none=True)
    wall, cpu = time.perf_counter(), time.process_time()
    encoder(clips).sum().backward()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure_policies(
    backbone: str,
    size: StepSize,
    policies: tuple[str, ...],
    *,
    repeats: int = 5,
    warmup: int = 1,
    seed: int = 0,
) -> list[dict]:
    """One row per policy: policy, median_s, min_s, max_s (wall), cpu_median_s, ratio and
    cpu_ratio (median / median of `none`; None when `none` was not measured), plus the
    step size and backbone."""
    torch.manual_seed(seed)
    base = build_encoder(backbone).train()
    clips = make_clips(size, seed)
    encoders = {}
    for policy in policies:
        encoder = copy.deepcopy(base)
        encoder.set_grad_checkpointing(policy)
        encoders[policy] = encoder
    times: dict[str, list[float]] = {policy: [] for policy in policies}
    cpu_times: dict[str, list[float]] = {policy: [] for policy in policies}
    for round_index in range(warmup + repeats):
        for policy in policies:
            wall, cpu = train_step_seconds(encoders[policy], clips)
            if round_index >= warmup:
                times[policy].append(wall)
                cpu_times[policy].append(cpu)
    medians = {policy: statistics.median(ts) for policy, ts in times.items()}
    cpu_medians = {policy: statistics.median(ts) for policy, ts in cpu_times.items()}
    baseline, cpu_baseline = medians.get("none"), cpu_medians.get("none")
    return [
        {
            "backbone": backbone,
            **asdict(size),
            "policy": policy,
            "median_s": medians[policy],
            "min_s": min(times[policy]),
            "max_s": max(times[policy]),
            "ratio": None if baseline is None else medians[policy] / baseline,
            "cpu_median_s": cpu_medians[policy],
            "cpu_ratio": None if cpu_baseline is None else cpu_medians[policy] / cpu_baseline,
        }
        for policy in policies
    ]


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_table(rows: list[dict], *, threads: int) -> Table:
    first = rows[0]
    table = Table(
        title=(
            f"{first['backbone']} training step, B={first['batch']} TR={first['tr']} "
            f"F={first['frames']} SR={first['sr']}, CPU, {threads} threads"
        )
    )
    table.add_column("policy")
    table.add_column("median s", justify="right")
    table.add_column("min-max s", justify="right")
    table.add_column("x none", justify="right")
    table.add_column("CPU s", justify="right")
    table.add_column("CPU x none", justify="right")
    for row in rows:
        table.add_row(
            row["policy"],
            f"{row['median_s']:.3f}",
            f"{row['min_s']:.3f}-{row['max_s']:.3f}",
            _ratio(row["ratio"]),
            f"{row['cpu_median_s']:.3f}",
            _ratio(row["cpu_ratio"]),
        )
    return table


@click.command()
@click.option("--backbone", type=click.Choice(list(ENCODERS)), default="tsm_r18", show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--tr", type=click.IntRange(min=1), default=8, show_default=True, help="snippets per video")
@click.option("--frames", type=click.IntRange(min=1), default=8, show_default=True, help="frames per snippet")
@click.option("--sr", type=click.IntRange(min=32), default=112, show_default=True, help="frame side in pixels")
@click.option("--policies", default="none,block,chunk:2,chunk:4", show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads")
@click.option("--memory/--no-memory", default=True, show_default=True,
              help="Also print the planner's estimated activation memory per policy (tsm_r18 + G-TAD, T-LoFi).")
def main(backbone, batch, tr, frames, sr, policies, repeats, warmup, threads, memory):
    """Print the step time of each checkpointing policy and its ratio to `none`, then the
    estimated activation memory of each policy against `none`."""
    if threads is not None:
        torch.set_num_threads(threads)
    size = StepSize(batch=batch, tr=tr, frames=frames, sr=sr)
    rows = measure_policies(backbone, size, tuple(p.strip() for p in policies.split(",")), repeats=repeats, warmup=warmup)
    Console().print(render_table(rows, threads=torch.get_num_threads()))
    if memory:
        from checkpointing_memory import report  # the memory side, beside this script

        report(backbone, "fp32", ["none", "block", "chunk:4"], [1, 2])


if __name__ == "__main__":
    main()
