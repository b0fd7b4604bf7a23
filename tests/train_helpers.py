"""Tiny real data and plans for the trainer tests: a synthetic dataset written as real
mp4 files (lofi.data.synth), and a Plan built from planner dataclasses."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from lofi.data.synth import SynthConfig, generate
from lofi.train.config import DataConfig, OptimConfig, TrainConfig
from planner.candidate import Candidate
from planner.estimate_types import MemoryEstimate
from planner.fidelity import Fidelity
from planner.plan import Hardware, Plan, PlanEntry, PlanScope

TINY_SYNTH = SynthConfig(videos=6, classes=2, seed=3, size=32, fps=8.0, min_duration=6.0, max_duration=10.0,
                         max_instances=2, train_fraction=0.67)
LOW = Fidelity(4, 32, 2)
FULL = Fidelity(8, 32, 2)


def make_tiny_dataset(root: Path):
    return generate(root, TINY_SYNTH)


def data_args(paths) -> list[str]:
    """`lofi train` options for the tiny dataset at its full fidelity (FULL, stride 2)."""
    return ["--annotations", str(paths.annotations), "--videos", str(paths.videos_dir),
            "--classification", str(paths.classification), "--full-tr", "8", "--full-sr", "32",
            "--frames-per-snippet", "2", "--stride", "2"]


def free_port() -> int:
    """A TCP port free on localhost now (bound to port 0, then released)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tiny_candidate(**changes) -> Candidate:
    base = Candidate(backbone="tsm_r18", head="gtad", batch_per_gpu=2, fidelity=LOW, accumulation=1)
    return replace(base, **changes)


def memory(gib: float) -> MemoryEstimate:
    total = int(gib * 2**30)
    return MemoryEstimate(parameters=total // 4, gradients=total // 4, optimizer_state=0,
                          activations=total - 2 * (total // 4), workspace=0, allocator_slack=0, context=0)


def tiny_plan(*candidates: Candidate, sizes: tuple[float, ...] | None = None) -> Plan:
    """A CPU plan whose entries are `candidates` in rank order (the first is chosen)."""
    candidates = candidates or (tiny_candidate(),)
    sizes = sizes or tuple(1.0 for _ in candidates)
    entries = tuple(
        PlanEntry(rank=i + 1, candidate=c, memory=memory(s), time=None, fits=True,
                  reason=None if i == 0 else "slower", quality_tier=i, quality="test")
        for i, (c, s) in enumerate(zip(candidates, sizes))
    )
    first = entries[0]
    scope = PlanScope(hardware=Hardware("cpu", "CPU (test)", 8 * 2**30, "cpu"), gpus=first.candidate.gpus,
                      nodes=first.candidate.nodes, margin=0.1,
                      usable_bytes=7 * 2**30, global_batch=first.candidate.global_batch, videos_per_epoch=4,
                      dataset="tiny synthetic")
    return Plan(scope=scope, chosen=first.candidate, memory=first.memory, time=None, why="test plan",
                candidates=entries)


def tiny_config(paths, **changes) -> TrainConfig:
    data = DataConfig(annotations=str(paths.annotations), media_root=str(paths.videos_dir),
                      classification=str(paths.classification), full_fidelity=FULL, stride=2)
    config = TrainConfig(
        data=data, backbone="tsm_r18", head="gtad",
        lofi=OptimConfig("sgd", lr=0.05, epochs=2, step_epochs=1, gamma=0.5),
        head_stage=OptimConfig("adam", lr=1e-3, epochs=2, step_epochs=1, gamma=0.5),
        head_batch=2, feature_batch=2, checkpoint_every=1, freeze_bn=True,
    )
    return replace(config, **changes)
