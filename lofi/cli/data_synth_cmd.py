"""`lofi data synth`: write the synthetic dataset (lofi.data.synth) and summarise it."""

from __future__ import annotations

from pathlib import Path

import click

from lofi.cli.console import console, counting

# Defaults repeated from SynthConfig so that `--help` does not import numpy/av;
# tests/test_synth.py checks that they agree.
DEFAULTS = {"videos": 120, "classes": 4, "seed": 0, "size": 64, "fps": 8.0,
            "min_duration": 16.0, "max_duration": 48.0, "max_instances": 4,
            "train_fraction": 0.75}


@click.command("synth")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write videos/, annotations.json, classification.json into.")
@click.option("--videos", default=DEFAULTS["videos"], show_default=True, help="Number of videos.")
@click.option("--classes", default=DEFAULTS["classes"], show_default=True,
              help="Number of action classes (2-6).")
@click.option("--seed", default=DEFAULTS["seed"], show_default=True, help="Same seed, same dataset.")
@click.option("--size", default=DEFAULTS["size"], show_default=True,
              help="Frame width and height in pixels (even, 16-512).")
@click.option("--fps", default=DEFAULTS["fps"], show_default=True, help="Frames per second (4-60).")
@click.option("--min-duration", default=DEFAULTS["min_duration"], show_default=True,
              help="Shortest video, seconds.")
@click.option("--max-duration", default=DEFAULTS["max_duration"], show_default=True,
              help="Longest video, seconds.")
@click.option("--max-instances", default=DEFAULTS["max_instances"], show_default=True,
              help="Most action instances in one video.")
@click.option("--train-fraction", default=DEFAULTS["train_fraction"], show_default=True,
              help="Share of videos in the training subset; the rest is validation.")
@click.option("--force", is_flag=True, help="Write into a folder that is not empty.")
def synth(out: Path, videos: int, classes: int, seed: int, size: int, fps: float,
          min_duration: float, max_duration: float, max_instances: int,
          train_fraction: float, force: bool) -> None:
    """Write a small synthetic dataset in the ActivityNet format: real H.264 videos whose
    actions are steady motions that only a trained video encoder tells from look-alikes."""
    from rich.table import Table

    from lofi.data.synth import SynthConfig, describe, generate

    config = SynthConfig(videos=videos, classes=classes, seed=seed, size=size, fps=fps,
                         min_duration=min_duration, max_duration=max_duration,
                         max_instances=max_instances, train_fraction=train_fraction).validate()
    with counting("writing videos") as advance:
        paths = generate(out, config, advance, overwrite=force)
    summary = describe(paths)

    table = Table(title=f"synthetic dataset in {paths.root}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("videos", f"{summary.videos} ({summary.training} training, "
                            f"{summary.validation} validation)")
    table.add_row("classes", ", ".join(summary.classes))
    table.add_row("instances", f"{summary.instances} ({summary.action_fraction:.0%} of the time)")
    table.add_row("duration", f"{summary.seconds / 60:.1f} min, {summary.frames} frames "
                              f"of {config.size}x{config.size} at {config.fps:g} fps")
    table.add_row("on disk", _size(summary.bytes))
    table.add_row("annotations", str(paths.annotations))
    table.add_row("classification", str(paths.classification))
    console.print(table)


def _size(count: int) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"
