"""torch.distributed set-up for runs launched by torchrun (one process per GPU, or
gloo processes on the CPU), and the `--gpus N` launcher that starts torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup_distributed(prefer_cuda: bool = True) -> DistContext:
    """Join the process group when torchrun started us; otherwise a single process.
    CUDA ranks use NCCL and one GPU each; CPU ranks use gloo."""
    use_cuda = prefer_cuda and torch.cuda.is_available()
    if not launched_by_torchrun():
        device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
        return DistContext(rank=0, local_rank=0, world_size=1, device=device)
    local_rank = int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank=dist.get_rank(), local_rank=local_rank, world_size=world_size, device=device)


def teardown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistContext) -> None:
    if context.distributed:
        dist.barrier()


def torchrun_command(nproc: int, args: list[str], *, nnodes: int = 1) -> list[str]:
    """The command that relaunches `lofi <args>` under torchrun with `nproc` processes."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={nnodes}",
        f"--nproc_per_node={nproc}",
        *(["--standalone"] if nnodes == 1 else []),
        "-m",
        "lofi",
        *args,
    ]


def launch_torchrun(nproc: int, args: list[str]) -> int:
    """Run `lofi <args>` under torchrun and return its exit code."""
    return subprocess.call(torchrun_command(nproc, args))
