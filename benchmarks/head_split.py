"""The head stage under torchrun: rank 0 alone against the batch split over two gloo
processes (each half the batch, then the gradient all-reduce of lofi.train.distributed),
in one run. The ratio decides how `lofi train` runs the head stage (docs/training.md).

    python benchmarks/head_split.py                      # G-TAD, C=512, T=16, batch 4
    python benchmarks/head_split.py --temporal 32 --batch 8 --steps 5

Both ways run the same steps on the same random features (B, C, T) with the real TAL
loss; the two modes alternate (alone, split, alone, ...) so that load from other
processes on a shared machine hits them alike, and the median step time is reported.
"""

from __future__ import annotations

import os
import socket
import statistics
import tempfile
import time

import click
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker(rank: int, port: int, args: dict, out_path: str) -> None:
    from lofi.models.heads import build_head
    from lofi.train.distributed import DistContext, average_gradients
    from lofi.train.objective import batch_targets, per_video_loss

    torch.set_num_threads(args["threads"])
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    group = dist.new_group(backend="gloo")
    context = DistContext(rank, rank, 2, torch.device("cpu"), handoff_group=group)
    torch.manual_seed(0)
    head = build_head(args["head"], in_channels=args["channels"], temporal_dim=args["temporal"])
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    batch, t = args["batch"], args["temporal"]
    features = torch.randn(batch, args["channels"], t)  # (B, C, T)
    segments = [torch.tensor([[0.2, 0.5]]) for _ in range(batch)]

    def step(rows: slice, split: bool) -> None:
        x = features[rows]
        start, end, iou = batch_targets(segments[rows], [1.0] * x.shape[0], t, x.device)
        terms = per_video_loss(head(x), start, end, iou, list(range(x.shape[0])))
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        if split:
            average_gradients(head.parameters(), context)
        optimizer.step()

    times = {"alone": [], "split": []}
    half = batch // 2
    for _ in range(args["steps"]):
        for mode in ("alone", "split"):
            dist.barrier(group)
            started = time.perf_counter()
            if mode == "alone":
                if rank == 0:
                    step(slice(0, batch), split=False)
            else:
                step(slice(rank * half, (rank + 1) * half), split=True)
            dist.barrier(group)
            times[mode].append(time.perf_counter() - started)
    if rank == 0:
        torch.save(times, out_path)
    dist.destroy_process_group()


@click.command()
@click.option("--head", default="gtad", show_default=True)
@click.option("--channels", default=512, show_default=True, help="Feature channels (tsm_r18: 512).")
@click.option("--temporal", default=16, show_default=True, help="Snippets per video (T).")
@click.option("--batch", default=4, show_default=True, help="Head batch (split in two halves).")
@click.option("--steps", default=3, show_default=True)
@click.option("--threads", default=1, show_default=True, help="Torch threads per process.")
def main(head, channels, temporal, batch, steps, threads) -> None:
    args = dict(head=head, channels=channels, temporal=temporal, batch=batch, steps=steps, threads=threads)
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "times.pt")
        mp.spawn(_worker, args=(_free_port(), args, out), nprocs=2, join=True)
        times = torch.load(out, weights_only=True)
    alone, split = statistics.median(times["alone"]), statistics.median(times["split"])
    print(f"{head} C={channels} T={temporal} batch {batch}: rank 0 alone {alone:.3f} s/step, "
          f"split over 2 gloo processes {split:.3f} s/step, split/alone = {split / alone:.2f}")


if __name__ == "__main__":
    main()
