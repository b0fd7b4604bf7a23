"""`lofi pretrain`: action-classification pre-training of the encoder on the trimmed
instances of the training subset (lofi.train.pretrain_stage); the weights are what
`lofi train --pretrained` reads."""

from __future__ import annotations

from pathlib import Path

import click

from lofi.cli.console import console


@click.command()
@click.option("--annotations", type=click.Path(dir_okay=False), help="ActivityNet-format annotations (default: synthetic data).")
@click.option("--videos", "videos_dir", type=click.Path(file_okay=False), help="Folder of videos.")
@click.option("--frames", "frames_dir", type=click.Path(file_okay=False), help="Folder of frame folders.")
@click.option("--full-tr", type=int, help="Snippets per video at full fidelity (default 100; synthetic 16).")
@click.option("--full-sr", type=int, help="Frame size at full fidelity (default 224; synthetic 64).")
@click.option("--frames-per-snippet", type=int, help="Frames per snippet (default 8; synthetic 4).")
@click.option("--stride", type=int, help="Source frames between a snippet's frames (default 8).")
@click.option("--backbone", default="tsm_r18", show_default=True, help="Encoder to pre-train.")
@click.option("--epochs", type=int, help="Epochs (default: the synthetic recipe's).")
@click.option("--lr", type=float, help="Learning rate (Adam; default 1e-3).")
@click.option("--flip/--no-flip", default=None, help="Horizontal flips in training (default: on; off on synthetic data).")
@click.option("--seed", type=int, help="Random seed (default 0).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Weights file to write (default: the cache, where `lofi train --auto` finds them).")
@click.option("--force", is_flag=True, help="Train again even if complete weights exist at the destination.")
def pretrain(**options) -> None:
    """Pre-train the encoder as a clip classifier on the trimmed action instances of the
    training subset at full fidelity (the paper's ACP stage) and save its weights."""
    from rich.table import Table

    from lofi.cli.console import StageBars
    from lofi.cli.train_run import data_options, hooks
    from lofi.train.launch import resolve_run_data
    from lofi.train.pretrain_stage import cached_weights_path, pretrain_data, pretrain_request
    from planner.cache_root import cache_root

    resolved = resolve_run_data(data_options(options), hooks())
    config = pretrain_request(epochs=options["epochs"], lr=options["lr"], seed=options["seed"])
    backbone = options["backbone"]
    out = options["out"] or cached_weights_path(cache_root(), backbone, resolved.data, config)
    outcome = pretrain_data(backbone, resolved.data, config, out, progress=StageBars(),
                            reuse=not options["force"])
    table = Table(title="pre-trained encoder" + (" (found, not retrained)" if outcome.reused else ""),
                  show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("weights", str(outcome.weights))
    table.add_row("backbone", backbone)
    table.add_row("epochs / steps", f"{outcome.epochs} / {outcome.steps}")
    if outcome.train_accuracy is not None:
        table.add_row("train accuracy (last epoch)", f"{outcome.train_accuracy:.1%}")
    if not outcome.reused:
        table.add_row("time", f"{outcome.seconds:.0f} s")
    table.add_row("use", f"lofi train --auto --pretrained {outcome.weights}")
    console.print(table)
