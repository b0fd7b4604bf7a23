"""Training-step time and estimated activation memory of each gradient-checkpointing
policy of a video encoder, against `none`, in one run: the memory-time frontier.

    python benchmarks/checkpointing.py                 # tsm_r50, B=1 TR=4 F=4 SR=112
    python benchmarks/checkpointing.py --threads 1 --policies none,blocks:4,block,chunk:2 --repeats 5

A step is forward + sum loss + backward on random uint8 clips, BatchNorm frozen (the
default). Policies run round-robin (none, blocks:2, ..., block, chunk:K, none, ...) so
that load from other processes on a shared machine hits them alike; the median over the
repeats is reported. The memory column is the planner's estimate for the same step (the
encoder alone, traced on meta tensors as `lofi plan` traces; `planner.estimate` on the
cpu profile): live activations and inputs at the step's allocated peak, against `none`.
Checkpointing a block recomputes its forward once in backward, so `block` costs about
(forward + forward + backward) / (forward + backward) ~ 4/3 and `blocks:N` a part of it;
`blocks:N` should fill the frontier between `none` and `block` monotonically (more N:
less memory, more time), which the script checks and prints. On a CPU, `chunk:K` also
pays for running the convolutions on K snippets at a time.

Gather, then render: `measure_policies` returns one dict per policy (add columns by
adding keys: `add_estimates` adds the memory); `render_table` turns them into a table.
"""

from __future__ import annotations

import copy
import os
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
    tr: int = 4
    frames: int = 4
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


@dataclass(frozen=True)
class EncoderStep:
    """The benchmark's step as a planner Workload: the encoder alone, sum loss, SGD."""

    key: str = "benchmark-encoder-step/1"

    def build_model(self, spec, device):
        encoder = build_encoder(spec.backbone, device=device)
        encoder.set_grad_checkpointing(spec.checkpointing)
        return encoder.train()

    def make_optimizer(self, model, step):
        from planner.workload import sgd_or_adam

        return sgd_or_adam(model, step)

    def make_batch(self, step, batch_size, device):
        f = step.model.fidelity
        return torch.empty(batch_size, f.tr, f.frames_per_snippet, 3, f.sr, f.sr, dtype=torch.uint8, device=device)

    def loss(self, model, batch):
        return model(batch).sum()


def add_estimates(rows: list[dict]) -> list[dict]:
    """Each row with `activation_bytes` (the planner's estimate of live activations and
    inputs at the step's peak) and `memory_ratio` (against `none`; None without it)."""
    from planner.candidate import Candidate
    from planner.estimate import estimate_grid
    from planner.fidelity import Fidelity
    from planner.hardware.profiles import get_profile
    from planner.tracing.cache import TraceCache

    first = rows[0]
    fidelity = Fidelity(first["tr"], first["sr"], first["frames"])
    candidates = [Candidate(first["backbone"], "none", first["batch"], fidelity=fidelity, checkpointing=row["policy"])
                  for row in rows]
    estimates = estimate_grid(candidates, EncoderStep(), get_profile("cpu"), videos_per_epoch=1, cache=TraceCache.in_memory(),
                              workers=1)
    found = {e.candidate.checkpointing: e.memory.activations for e in estimates}
    base = found.get("none")
    return [{**row, "activation_bytes": found[row["policy"]],
             "memory_ratio": None if base is None else found[row["policy"]] / base} for row in rows]


def frontier(rows: list[dict]) -> str:
    """Whether none, blocks:N (N ascending), block have non-increasing estimated memory
    and non-decreasing measured step time (wall median, and process CPU median)."""
    by = {row["policy"]: row for row in rows}
    blocks = sorted((row for row in rows if row["policy"].startswith("blocks:")),
                    key=lambda row: int(row["policy"].split(":")[1]))
    line = [by[p] for p in ("none",) if p in by] + blocks + [by[p] for p in ("block",) if p in by]
    if len(line) < 3:
        return "frontier: needs none or block and at least one blocks:N"
    names = " < ".join(row["policy"] for row in line)
    checks = []
    for label, key, order in (("estimated memory", "activation_bytes", -1), ("step time", "median_s", 1),
                              ("CPU time", "cpu_median_s", 1)):
        values = [row.get(key) for row in line]
        if any(v is None for v in values):
            continue
        ok = all((b - a) * order >= 0 for a, b in zip(values, values[1:]))
        checks.append(f"{label} {'monotone' if ok else 'NOT monotone'}")
    return f"frontier {names}: " + "; ".join(checks)


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
    table.add_column("est. activations MiB", justify="right")
    table.add_column("memory x none", justify="right")
    for row in rows:
        table.add_row(
            row["policy"],
            f"{row['median_s']:.3f}",
            f"{row['min_s']:.3f}-{row['max_s']:.3f}",
            _ratio(row["ratio"]),
            f"{row['cpu_median_s']:.3f}",
            _ratio(row["cpu_ratio"]),
            "-" if row.get("activation_bytes") is None else f"{row['activation_bytes'] / 2**20:.0f}",
            _ratio(row.get("memory_ratio")),
        )
    return table


@click.command()
@click.option("--backbone", type=click.Choice(list(ENCODERS)), default="tsm_r50", show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--tr", type=click.IntRange(min=1), default=4, show_default=True, help="snippets per video")
@click.option("--frames", type=click.IntRange(min=1), default=4, show_default=True, help="frames per snippet")
@click.option("--sr", type=click.IntRange(min=32), default=112, show_default=True, help="frame side in pixels")
@click.option("--policies", default="none,blocks:2,blocks:4,blocks:8,blocks:12,block,chunk:2", show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads")
@click.option("--memory/--no-memory", default=True, show_default=True,
              help="Also estimate each policy's activation memory with the planner (same step).")
def main(backbone, batch, tr, frames, sr, policies, repeats, warmup, threads, memory):
    """Print the step time of each checkpointing policy and its ratio to `none`, the
    estimated activation memory and its ratio to `none`, and whether blocks:N fills the
    frontier between none and block monotonically."""
    if threads is not None:
        torch.set_num_threads(threads)
    size = StepSize(batch=batch, tr=tr, frames=frames, sr=sr)
    start = time.perf_counter()
    rows = measure_policies(backbone, size, tuple(p.strip() for p in policies.split(",")), repeats=repeats, warmup=warmup)
    if memory:
        rows = add_estimates(rows)
    console = Console(width=160)  # the whole table also when the output is a file
    console.print(render_table(rows, threads=torch.get_num_threads()))
    console.print(frontier(rows))
    console.print(f"{time.perf_counter() - start:.0f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
