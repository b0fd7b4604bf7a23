"""torch.distributed set-up for runs launched by torchrun (one process per GPU, or
gloo processes on the CPU), the collectives the stages agree through, and the
`--gpus N` launcher that starts torchrun.

Three process groups. The default one (NCCL on GPUs, gloo on CPUs) carries gradients,
and a gloo group the per-step agreements (small CPU flags); both time out after
`LOFI_COLLECTIVE_TIMEOUT` seconds (default 600), so a rank that dies or stops answering
makes the others fail with `RankFailure` instead of hanging. A gloo group with a long
timeout (`LOFI_HANDOFF_TIMEOUT`, default 24 h) orders the hand-offs between stages,
where some ranks wait while others work (rank 0 trains the head while the others wait
for it)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from lofi.errors import LofiError, OptionError

COLLECTIVE_TIMEOUT_S = 600.0
HANDOFF_TIMEOUT_S = 24 * 3600.0


class RankFailure(LofiError):
    """Another process of the run stopped answering (died, or timed out in a collective)."""

    exit_code = 1


@dataclass(frozen=True)
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    nodes: int = 1
    handoff_group: Any = field(default=None, compare=False, repr=False)
    step_group: Any = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def gpus_per_node(self) -> int:
        return self.world_size // self.nodes


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def _seconds(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise OptionError(f"{name}={value!r}: not a number of seconds") from None
    if seconds <= 0:
        raise OptionError(f"{name}={value!r}: must be > 0 seconds")
    return seconds


def setup_distributed(prefer_cuda: bool = True) -> DistContext:
    """Join the process group when torchrun started us; otherwise a single process.
    CUDA ranks use NCCL and one GPU each; CPU ranks use gloo."""
    use_cuda = prefer_cuda and torch.cuda.is_available()
    if not launched_by_torchrun():
        device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
        return DistContext(rank=0, local_rank=0, world_size=1, device=device)
    local_rank = int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    collective = timedelta(seconds=_seconds("LOFI_COLLECTIVE_TIMEOUT", COLLECTIVE_TIMEOUT_S))
    handoff = timedelta(seconds=_seconds("LOFI_HANDOFF_TIMEOUT", HANDOFF_TIMEOUT_S))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=collective)
    handoff_group = dist.new_group(backend="gloo", timeout=handoff) if world_size > 1 else None
    step_group = dist.new_group(backend="gloo", timeout=collective) if world_size > 1 else None
    return DistContext(rank=dist.get_rank(), local_rank=local_rank, world_size=world_size, device=device,
                       nodes=max(1, world_size // max(1, per_node)), handoff_group=handoff_group,
                       step_group=step_group)


def teardown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # a peer already gone: nothing left to tear down cleanly
            pass


def _collective(what: str, call):
    try:
        return call()
    except (RuntimeError, dist.DistError) as error:  # DistBackendError, gloo "connection closed", timeouts
        first = _first_sentence(str(error)) or type(error).__name__
        raise RankFailure(f"another process of this run stopped answering during {what} ({first}); "
                          "see its own output above; the last checkpoint is kept, --resume continues") from None


def _first_sentence(message: str) -> str:
    """gloo/NCCL errors start with a source location and go on for lines: keep the gist."""
    text = message.strip().splitlines()[0] if message.strip() else ""
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)  # "[.../pair.cc:561] "
    return text.split(". ")[0].rstrip(".")


def barrier(context: DistContext, what: str = "a hand-off between stages") -> None:
    """Wait for every rank (the long-timeout group: some ranks may be working alone)."""
    if context.distributed:
        _collective(what, lambda: dist.barrier(group=context.handoff_group))


def agree(context: DistContext, *flags: bool, what: str = "an agreement between ranks",
          handoff: bool = False) -> tuple[bool, ...]:
    """Each flag true when it is true on any rank (one all-reduce MAX): how the ranks
    agree to stop, or to fall back after one of them ran out of memory, at the same step.
    `handoff`: some ranks may arrive much later (the long-timeout group)."""
    if not context.distributed:
        return tuple(bool(f) for f in flags)
    values = torch.tensor([1.0 if f else 0.0 for f in flags])
    group = context.handoff_group if handoff else context.step_group  # gloo: CPU tensors
    _collective(what, lambda: dist.all_reduce(values, op=dist.ReduceOp.MAX, group=group))
    return tuple(bool(v > 0) for v in values.tolist())


def sum_over_ranks(context: DistContext, *values: float, what: str = "a sum over ranks") -> tuple[float, ...]:
    """Each value summed over the ranks (one float64 all-reduce on the step group)."""
    if not context.distributed:
        return tuple(float(v) for v in values)
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
    _collective(what, lambda: dist.all_reduce(tensor, group=context.step_group))
    return tuple(tensor.tolist())


def gather(context: DistContext, item: Any, what: str = "a gather between ranks") -> list[Any]:
    """Every rank's `item` (small, picklable), in rank order, on every rank."""
    if not context.distributed:
        return [item]
    out: list[Any] = [None] * context.world_size
    _collective(what, lambda: dist.all_gather_object(out, item, group=context.handoff_group))
    return out


def average_gradients(parameters, context: DistContext, bucket_bytes: int = 25 * 2**20) -> None:
    """Average the gradients of `parameters` over the ranks (flattened buckets). Done
    after the ranks agreed that none ran out of memory: an all-reduce inside backward
    (DDP's hooks) would leave the others waiting for a rank that failed mid-backward."""
    if not context.distributed:
        return
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    params = [p for p in parameters if p.requires_grad]
    # Parameters unused on every rank (a head for another fidelity) keep no gradient, as
    # in a single process; a rank whose videos were all skipped contributes zeros.
    used = torch.tensor([0.0 if p.grad is None else 1.0 for p in params])
    _collective("the gradient all-reduce", lambda: dist.all_reduce(used, op=dist.ReduceOp.MAX,
                                                                  group=context.step_group))
    for p, flag in zip(params, used.tolist()):
        if flag > 0 and p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params if p.grad is not None]
    for bucket in gradient_buckets([g.numel() * g.element_size() for g in grads], bucket_bytes):
        members = [grads[i] for i in bucket]
        flat = _flatten_dense_tensors(members)  # the one flat bucket alive (planner.cost.overheads.ddp_bytes)
        _collective("the gradient all-reduce", lambda flat=flat: dist.all_reduce(flat))
        flat /= context.world_size
        for grad, synced in zip(members, _unflatten_dense_tensors(flat, members)):
            grad.copy_(synced)
        del flat


def gradient_buckets(sizes: list[int], bucket_bytes: int) -> list[list[int]]:
    """Indices of the gradients packed, in order, into buckets of at most `bucket_bytes`
    (a gradient larger than that is a bucket of its own). Gradients of one model share a
    dtype here (the master weights are fp32 under autocast), so size alone decides."""
    buckets: list[list[int]] = []
    size = 0
    for i, nbytes in enumerate(sizes):
        if buckets and size + nbytes <= bucket_bytes:
            buckets[-1].append(i)
            size += nbytes
        else:
            buckets.append([i])
            size = nbytes
    return buckets


def broadcast_parameters(module: torch.nn.Module, context: DistContext, skip: Collection[str] = ()) -> None:
    """Every rank starts from rank 0's parameters and buffers (but those named in
    `skip`: constants every rank computes the same way)."""
    if not context.distributed:
        return
    tensors = [t for name, t in [*module.named_parameters(), *module.named_buffers()] if name not in skip]
    for tensor in tensors:
        _collective("the initial broadcast", lambda t=tensor: dist.broadcast(t.data, src=0))


def torchrun_command(nproc: int, args: list[str], *, nnodes: int = 1) -> list[str]:
    """The command that relaunches `lofi <args>` under torchrun with `nproc` processes
    (through lofi.train.launch: torchrun without its traceback on a rank's failure)."""
    return [
        sys.executable,
        "-m",
        "lofi.train.launch",
        f"--nnodes={nnodes}",
        f"--nproc_per_node={nproc}",
        *(["--standalone"] if nnodes == 1 else []),
        "-m",
        "lofi",
        *args,
    ]


def launch_torchrun(nproc: int, args: list[str]) -> int:
    """Run `lofi <args>` under torchrun and return its exit code. SIGTERM sent to this
    process (what schedulers send) is passed on to torchrun, which passes it to every
    rank: each one finishes its step, checkpoints and stops. SIGINT from a terminal
    already reaches torchrun and the ranks (one process group), so it is not passed on
    twice. A signalled run that stopped reports 130."""
    process = subprocess.Popen(torchrun_command(nproc, args))
    signalled: list[int] = []

    def forward(signum, frame) -> None:
        signalled.append(signum)
        if signum == signal.SIGTERM:
            process.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 130 if signalled and code != 0 else code
