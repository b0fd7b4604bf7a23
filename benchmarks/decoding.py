"""Clips per second of `read_video_clip` against a plain full sequential decode of the
same file, measured in the same run.

    python benchmarks/decoding.py                     # 3 min, 30 fps, 320x240, keyframe every 2 s
    python benchmarks/decoding.py --minutes 10 --repeats 3

The video is made here, in a temporary folder: H.264 (x264 `veryfast`, crf 23) of a
moving textured scene, so that decoding costs what a real video of that size costs.
Baseline: every frame decoded in order with decoder threads on and nothing converted,
the least work any reader that touches every frame does. Cases: TR=100, F=8 at SR 112
and 224 (the full and S-LoFi fidelities; dense at this length, so the target is >= 0.8x
the baseline) and TR=25, F=8 (T-LoFi and the low-budget fidelity; sparse, so the target
is > 1x). Cases run round-robin with the baseline so that load from other processes hits
them alike; the median over the repeats is reported.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import click
import numpy as np
from rich.console import Console
from rich.table import Table

from lofi.data.clip_times import decoded_fraction, snippet_times
from lofi.data.video import decode_plan, read_video_clip
from planner.fidelity import Fidelity

CASES: tuple[Fidelity, ...] = (Fidelity(100, 112), Fidelity(100, 224), Fidelity(25, 224), Fidelity(25, 112))


def make_video(path: Path, seconds: float, fps: int, width: int, height: int, keyint: int) -> Path:
    """A textured scene that pans and changes brightness, encoded frame by frame."""
    y, x = np.mgrid[0:height, 0:2 * width].astype(np.float32)
    texture = 128 + 60 * np.sin(x / 7.0) * np.cos(y / 5.0) + 30 * np.sin(x / 40.0 + y / 30.0)
    scene = np.stack([texture, np.roll(texture, 17, axis=0), 255 - texture], axis=-1)
    scene = np.clip(scene, 0, 255).astype(np.uint8)  # (H, 2W, 3), panned across
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={
            "crf": "23", "preset": "veryfast", "x264-params": f"keyint={keyint}:min-keyint={keyint}"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(int(seconds * fps)):
            shift = (index * 3) % width
            gain = 0.75 + 0.25 * np.sin(index / 50.0)
            lut = np.clip(np.arange(256) * gain + 20, 0, 255).astype(np.uint8)
            image = lut[scene[:, shift:shift + width]]  # (H, W, 3)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def full_decode(path: Path) -> None:
    """Decode every frame in order, threads on, nothing converted."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for _ in container.decode(stream):
            pass


def timed(work) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of `work()`."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(path: Path, repeats: int) -> tuple[tuple[float, float], list[dict]]:
    """Median (wall, CPU) seconds of the baseline, and one row per case."""
    baseline: list[tuple[float, float]] = []
    times: dict[Fidelity, list[tuple[float, float]]] = {fidelity: [] for fidelity in CASES}
    for _ in range(repeats):
        baseline.append(timed(lambda: full_decode(path)))
        for fidelity in CASES:
            times[fidelity].append(timed(lambda: read_video_clip(path, fidelity)))
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        duration, fps = float(stream.duration * stream.time_base), float(stream.average_rate)
    base = _medians(baseline)
    rows = []
    for fidelity in CASES:
        runs = decode_plan(path, fidelity)
        targets = np.unique(snippet_times(duration, fps, fidelity.tr, fidelity.frames_per_snippet))
        wall, cpu = _medians(times[fidelity])
        rows.append({
            "fidelity": fidelity,
            "mode": "dense" if len(runs) == 1 else "sparse",
            "seeks": sum(run.seek is not None for run in runs),
            "decoded": decoded_fraction(runs, targets, duration),
            "clips_per_s": 1.0 / wall,
            "ratio": base[0] / wall,
            "cpu_ratio": base[1] / cpu,
        })
    return base, rows


def _medians(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def render(console: Console, base: tuple[float, float], rows: list[dict], description: str) -> None:
    console.print(f"read_video_clip vs full sequential decode: {description}", highlight=False)
    table = Table()
    for column in ("TR/SR", "F", "mode", "seeks", "decoded", "clips/s", "x full", "x full (CPU)"):
        table.add_column(column, justify="right")
    table.add_row("full decode", "", "all", "0", "100%", f"{1.0 / base[0]:.3f}", "1.00", "1.00")
    for row in rows:
        fidelity = row["fidelity"]
        table.add_row(fidelity.label(), str(fidelity.frames_per_snippet), row["mode"],
                      str(row["seeks"]), f"{row['decoded']:.0%}", f"{row['clips_per_s']:.3f}",
                      f"{row['ratio']:.2f}", f"{row['cpu_ratio']:.2f}")
    console.print(table)
    console.print("x full: clips/s over full decodes/s (wall clock); x full (CPU): the same "
                  "ratio in CPU seconds of this process, less sensitive to other load.",
                  highlight=False)


@click.command()
@click.option("--minutes", type=float, default=3.0, show_default=True)
@click.option("--fps", type=int, default=30, show_default=True)
@click.option("--size", default="320x240", show_default=True, help="WIDTHxHEIGHT")
@click.option("--keyframe-seconds", type=float, default=2.0, show_default=True)
@click.option("--repeats", type=int, default=3, show_default=True)
def main(minutes: float, fps: int, size: str, keyframe_seconds: float, repeats: int) -> None:
    console = Console()
    width, height = (int(part) for part in size.lower().split("x"))
    keyint = max(1, int(round(keyframe_seconds * fps)))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "benchmark.mp4"
        start = time.perf_counter()
        make_video(path, minutes * 60, fps, width, height, keyint)
        console.print(f"made {path.name}: {minutes:g} min, {fps} fps, {width}x{height}, keyframe every "
                      f"{keyint} frames, {path.stat().st_size / 1e6:.1f} MB in "
                      f"{time.perf_counter() - start:.1f} s", highlight=False)
        base, rows = measure(path, repeats)
    render(console, base, rows, f"{minutes:g} min {width}x{height} @ {fps} fps, median of {repeats}")


if __name__ == "__main__":
    main()
