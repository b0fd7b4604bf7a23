"""`lofi train`: plan (or read a plan), then run the LoFi pipeline — LoFi end to end,
full-fidelity features, head, evaluation — on this machine's GPUs or CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import click

STAGE_NAMES = ("pretrain", "lofi", "features", "head", "eval")


@click.command()
@click.option("--auto", is_flag=True, help="Plan for the hardware found here (no GPU: the CPU), then train.")
@click.option("--plan", "plan_path", type=click.Path(path_type=Path, dir_okay=False), help="Train the plan in this plan.json.")
@click.option("--stage", "stages", multiple=True, type=click.Choice(STAGE_NAMES), help="Run only this stage (repeatable).")
@click.option("--baseline", is_flag=True, help="Skip the LoFi stage: frozen pre-trained encoder (the paper's ACP baseline).")
@click.option("--from-scratch", is_flag=True,
              help="Synthetic data: no action-classification pre-training; the encoder starts from random init.")
@click.option("--resume", is_flag=True, help="Continue the run in runs/NAME from its checkpoints.")
@click.option("--overwrite", is_flag=True, help="Start runs/NAME afresh, deleting what is there.")
@click.option("--force", is_flag=True, help="Train a plan made for other hardware than found here.")
@click.option("--name", help="Run folder name (default: lofi, or baseline with --baseline).")
@click.option("--runs-dir", type=click.Path(path_type=Path, file_okay=False), default="runs", show_default=True)
@click.option("--annotations", type=click.Path(dir_okay=False), help="ActivityNet-format annotations (default: synthetic data).")
@click.option("--videos", "videos_dir", type=click.Path(file_okay=False), help="Folder of videos (v_<id>.mp4, <id>.mp4, ...).")
@click.option("--frames", "frames_dir", type=click.Path(file_okay=False), help="Folder of frame folders (<id>/img_00001.jpg).")
@click.option("--classification", type=click.Path(dir_okay=False), help="Video-level class scores for detection.")
@click.option("--pretrained", type=click.Path(dir_okay=False), help="Local encoder weights (torchvision or TSM layout).")
@click.option("--full-tr", type=int, help="Snippets per video at full fidelity (default 100; synthetic 16).")
@click.option("--full-sr", type=int, help="Frame size at full fidelity (default 224; synthetic 64).")
@click.option("--frames-per-snippet", type=int, help="Frames per snippet (default 8; synthetic 4).")
@click.option("--stride", type=int, help="Source frames between a snippet's frames (default 8).")
@click.option("--flip/--no-flip", default=None, help="Horizontal flips in training (default: on; off on synthetic data).")
@click.option("--gpu", "gpu_name", default="auto", show_default=True, help="Plan for this profile (auto: the GPU here, else the CPU).")
@click.option("--gpus", type=int, default=1, show_default=True, help="Processes (GPUs) to train with; >1 launches torchrun.")
@click.option("--margin", type=float, default=0.10, show_default=True, help="Memory kept free when planning.")
@click.option("--max-epoch-hours", type=float, help="Time budget per LoFi epoch when planning.")
@click.option("--backbone", "backbones", multiple=True, help="Restrict planning to these encoders.")
@click.option("--head", type=click.Choice(["gtad", "bmn"]), default="gtad", show_default=True)
@click.option("--epochs", type=int, help="LoFi stage epochs.")
@click.option("--lr", type=float, help="LoFi stage learning rate (paper: 0.1).")
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), help="LoFi stage optimizer (paper: sgd).")
@click.option("--momentum", type=float, help="LoFi stage SGD momentum (paper: 0).")
@click.option("--weight-decay", type=float, help="LoFi stage weight decay (paper: 1e-4).")
@click.option("--lr-step", type=int, help="LoFi stage: epochs between lr decays (paper: 5).")
@click.option("--lr-gamma", type=float, help="LoFi stage lr decay factor (paper: 0.5).")
@click.option("--head-epochs", type=int, help="Head stage epochs.")
@click.option("--head-lr", type=float, help="Head stage learning rate.")
@click.option("--head-batch", type=int, help="Head stage batch size.")
@click.option("--cycle", type=click.Choice(["long", "short"]), help="C-LoFi cycle: every epoch or every 16 batches.")
@click.option("--seed", type=int, help="Random seed (default 0).")
@click.option("--workers", type=click.IntRange(min=0), help="DataLoader worker processes (default 0).")
@click.option("--checkpoint-every", type=int, help="Optimizer steps between checkpoints (default 50).")
@click.option("--override-plan", is_flag=True,
              help="Let --optimizer/--momentum/--freeze-bn/--train-bn differ from the plan (recorded in config.json).")
@click.option("--freeze-bn/--train-bn", default=None,
              help="BatchNorm statistics frozen or trained (default: frozen with --pretrained, trained without).")
@click.option("--bn-mode", type=click.Choice(["train", "frozen", "partial"]),
              help="Encoder BatchNorm in the LoFi stage (partial: TSM partialBN); overrides --freeze-bn.")
@click.option("--proposal-end", type=click.Choice(["lofi", "official"]),
              help="official: no proposal ends after (T-1)/T, as the BMN/G-TAD loops (default lofi).")
def train(**options) -> None:
    """Plan, then train LoFi end to end, extract full-fidelity features, train the head,
    evaluate. With no data options it uses a small synthetic dataset."""
    from lofi.cli.train_run import run_training
    from lofi.train.launch import apply_planned_alloc_conf

    if options["plan_path"] is not None and options["plan_path"].is_file():
        apply_planned_alloc_conf(options["plan_path"])  # before anything starts CUDA
    run_training(options, argv=sys.argv[1:])
