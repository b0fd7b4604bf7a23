"""Trace one training step on tensors without memory: every storage allocation and free,
with its size and category, and the FLOPs of every phase.

How: a TorchDispatchMode (`Recorder`) sees every aten op below autograd. Each output
tensor whose storage it has not seen is an allocation; a weakref finalizer on the storage
records the free when the last tensor (view, saved tensor, grad) using it dies, the
moment the caching allocator would get the block back. This is the method of PyTorch's
own `torch.distributed._tools.mem_tracker.MemTracker` (tests/test_trace.py checks the
two agree). FLOPs: torch.utils.flop_counter's formulas (matmul/conv/attention and their
backward), so recomputation under checkpointing is counted.

Tensors live on the "meta" device by default (no memory, shape inference only); mode
"fake" runs the same step under FakeTensorMode on fake CPU tensors (slower, used to
cross-check). CUDA-specific behaviour is emulated: autocast (`planner.tracing.autocast`),
the foreach optimizers CUDA defaults to (`planner.workload.sgd_or_adam`). Kernel scratch
that PyTorch takes from the caching allocator is not a tensor: every convolution (forward
and backward) records a cuDNN workspace block, allocated after its outputs and freed at
its end, with size 0 here; `planner.estimate` gives it the workspace size of the target
(and adds the cuBLAS workspaces, allocated once per handle and stream).

One step is traced (`planner.tracing.step`): setup (parameters), data, forward (+loss),
backward, optimizer (step, zero_grad). The steady state (optimizer state present, the
previous batch replaced, accumulation) is assembled from it by `planner.tracing.synthesis`.
"""

from __future__ import annotations

import contextvars
import weakref
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from planner.cost.allocator import ALLOC, FREE
from planner.errors import PlannerError
from planner.tracing.meta_kernels import META_KERNELS

PARAMETER, GRADIENT, OPTIMIZER_STATE, ACTIVATION, INPUT, STUB, WORKSPACE = range(7)
CATEGORY_NAMES = ("parameter", "gradient", "optimizer_state", "activation", "input", "stub", "workspace")
TRACE_FORMAT = 3  # bump when the meaning of a trace changes (part of cache keys)


class TraceError(PlannerError):
    """A workload could not be traced (data-dependent control flow, banned op, ...)."""


@dataclass(frozen=True, eq=False)
class Trace:
    """Events of one traced step. Event i: ops[i] ALLOC/FREE of block ids[i], sizes[i]
    bytes (0 for frees), categories[i] (the block's category, frees included)."""

    ops: np.ndarray  # int8 (E,)
    ids: np.ndarray  # int64 (E,)
    sizes: np.ndarray  # int64 (E,)
    categories: np.ndarray  # int8 (E,)
    marks: tuple[tuple[str, int], ...]  # (label, index of the first event after the mark)
    flops: tuple[tuple[str, float], ...]  # FLOPs per phase / period label
    grad_bytes: tuple[int, ...]  # each trainable parameter's gradient bytes, registration order
    carry: tuple[int, ...]  # blocks alive at the end that the next step's batch/loss replace
    batch_size: int
    stub_units: int = 0  # work skipped at trace time (e.g. snippets), affine in the batch size
    units_per_period: int = 1  # work per repeated period (e.g. snippets per chunk)
    host_sizes: tuple[int, ...] = ()  # bytes of each saved tensor offloaded to host memory, in order

    @property
    def host_bytes(self) -> int:
        """Bytes copied to host memory in forward (and back in backward) per micro-batch."""
        return sum(self.host_sizes)

    @property
    def repeats(self) -> int:
        """Periods skipped at trace time, to be synthesized (`expand_periods`)."""
        return -(-self.stub_units // self.units_per_period)

    def __len__(self) -> int:
        return len(self.ops)

    def mark(self, label: str) -> int:
        for name, index in self.marks:
            if name == label:
                return index
        raise KeyError(f"trace has no mark {label!r}")

    def phase_flops(self, label: str) -> float:
        return sum(value for name, value in self.flops if name == label)

    @property
    def total_flops(self) -> float:
        return sum(value for _, value in self.flops)

    def same_structure(self, other: Trace) -> bool:
        return (
            len(self) == len(other)
            and self.marks == other.marks
            and np.array_equal(self.ops, other.ops)
            and np.array_equal(self.ids, other.ids)
            and np.array_equal(self.categories, other.categories)
            and self.carry == other.carry
            and (self.stub_units == 0) == (other.stub_units == 0)
            and self.units_per_period == other.units_per_period
            and len(self.host_sizes) == len(other.host_sizes)
            and [n for n, _ in self.flops] == [n for n, _ in other.flops]
        )


class Recorder(TorchDispatchMode):
    """Records allocations (outputs with a storage not seen before) and frees (storage
    finalizers). `mark(label)` starts a phase; FLOPs are summed per phase."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # Traces never run under torch.compile: skip the per-op torch._dynamo.disable
        # wrapper TorchDispatchMode puts around __torch_dispatch__ (about 10% of a trace).
        return False

    def __init__(
        self,
        *,
        count_flops: bool = True,
        compress: bool = True,
        cache: bool = True,
        exclusive: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self._exclusive = exclusive  # use counts of a tensor only autograd's buffer holds
        self.probed: list[tuple[tuple[int, int], ...]] = []
        self._call = META_KERNELS if cache else (lambda func, args, kwargs: func(*args, **kwargs))
        self.compress = compress  # workloads may skip repeated periods (see `period`, `stub`)
        self.stub_units = 0
        self.units_per_period = 1
        self.host_sizes: list[int] = []  # tensors saved to host memory (`host`)
        self._ops: list[int] = []
        self._ids: list[int] = []
        self._sizes: list[int] = []
        self._live: dict[int, int] = {}  # id(storage object) -> block id
        self._bytes: dict[int, int] = {}  # block id -> bytes, while live
        self._next = 0
        self._open = True
        self._phase = "setup"
        self.flops: dict[str, float] = defaultdict(float)
        self.marks: list[tuple[str, int]] = []
        self.categories: dict[int, int] = {}  # block id -> category other than ACTIVATION
        self.count_flops = count_flops

    # -- recording -------------------------------------------------------------------

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _ADD and not kwargs and _in_backward():
            out = self._accumulate(args)
            if out is not None:
                return out
        out = self._call(func, args, kwargs)
        if self.count_flops:
            formula = _FLOP_FORMULAS.get(func, _UNKNOWN)
            if formula is _UNKNOWN:
                formula = _FLOP_FORMULAS[func] = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.flops[self._phase] += formula(*args, **kwargs, out_val=out)
        self._track(out)
        if func._overloadpacket in _CONVOLUTIONS:
            self._workspace()
        return out

    def _workspace(self) -> None:
        """A cuDNN convolution workspace: allocated after the outputs, freed at the end
        of the kernel call; size 0 until the replay knows the target's."""
        block = self._next
        self._next += 1
        self.categories[block] = WORKSPACE
        self._ops += (ALLOC, FREE)
        self._ids += (block, block)
        self._sizes += (0, 0)

    def _accumulate(self, args: tuple) -> torch.Tensor | None:
        """Autograd's InputBuffer sums two gradients of one tensor in place when it holds
        the only reference to one of them (torch/csrc/autograd/input_buffer.cpp,
        `accumulate`/`can_accumulate_inplace`), but never while a dispatch mode is active
        (`at::isTensorSubclassLike` is then true for every tensor), so a trace would show
        an extra allocation per accumulation. Redo the engine's choice here."""
        a, b = args[0], args[1] if len(args) > 1 else None
        if not isinstance(b, torch.Tensor) or a.shape != b.shape or a.dtype != b.dtype:
            return None
        counts = tuple(_use_counts(t) for t in (a, b))
        if self._exclusive is None:
            self.probed.append(counts)
            return None
        for target, other, count in ((a, b, counts[0]), (b, a, counts[1])):
            if count == self._exclusive and _dense(target):
                return _ADD_INPLACE(target, other)
        return None

    def _track(self, value) -> None:
        if isinstance(value, torch.Tensor):
            self._track_tensor(value)
        elif isinstance(value, (tuple, list)):
            for item in value:
                self._track(item)

    def _track_tensor(self, tensor: torch.Tensor, category: int | None = None) -> int | None:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # no storage (sparse, nested)
            return None
        key, nbytes = id(storage), storage.nbytes()
        block = self._live.get(key)
        if block is not None:
            if self._bytes[block] == nbytes:
                return block
            self._release(key, block)  # storage resized in place: old block freed, new one made
        if nbytes == 0:
            return None  # the caching allocator hands out no block for 0 bytes
        block = self._next
        self._next += 1
        self._live[key] = block
        self._bytes[block] = nbytes
        self._ops.append(ALLOC)
        self._ids.append(block)
        self._sizes.append(nbytes)
        if category is not None:
            self.categories[block] = category
        weakref.finalize(storage, self._release, key, block)
        return block

    def _release(self, key: int, block: int) -> None:
        if not self._open or self._live.get(key) != block:
            return
        del self._live[key]
        del self._bytes[block]
        self._ops.append(FREE)
        self._ids.append(block)
        self._sizes.append(0)

    # -- annotations -----------------------------------------------------------------

    def adopt(self, tensors: Iterable[torch.Tensor], category: int) -> None:
        """Record tensors that exist already (parameters, buffers) as allocations."""
        for tensor in tensors:
            self._track_tensor(tensor, category)

    def classify(self, tensors: Iterable[torch.Tensor], category: int) -> None:
        """Give the live blocks of `tensors` a category (gradients, optimizer state)."""
        for tensor in tensors:
            block = self.block_of(tensor)
            if block is not None:
                self.categories[block] = category

    def block_of(self, tensor: torch.Tensor) -> int | None:
        return self._live.get(id(tensor.untyped_storage()))

    def mark(self, label: str) -> None:
        self.marks.append((label, len(self._ops)))
        self._phase = label

    def period(self, kind: str, index: int) -> None:
        """Mark the start of a repeated period: kind "forward", "forward-end" or
        "recompute", index its position (e.g. a chunk number)."""
        self.mark(f"period:{kind}:{index}")

    def stub(self, tensor: torch.Tensor, *, units: int, units_per_period: int) -> None:
        """`tensor` stands in for the outputs of periods skipped at trace time: `units`
        of work (affine in the batch size), `units_per_period` per period. Its events are
        dropped and ceil(units / units_per_period) periods synthesized (`expand_periods`)."""
        self.classify([tensor], STUB)
        self.stub_units, self.units_per_period = units, units_per_period

    def host(self, tensor: torch.Tensor) -> None:
        """`tensor` is saved for backward in host memory, not on the device (activation
        offload): the workload drops its device reference and calls this instead of
        copying, and allocates a device copy where backward unpacks it."""
        self.host_sizes.append(tensor.numel() * tensor.element_size())

    @property
    def event_count(self) -> int:
        return len(self._ops)

    def live_blocks(self) -> list[int]:
        return list(self._bytes)

    def close(self, *, batch_size: int, grad_bytes: tuple[int, ...], carry: tuple[int, ...]) -> Trace:
        """Stop recording and return the trace; categories apply to frees too."""
        self._open = False
        ids = np.asarray(self._ids, dtype=np.int64)
        lookup = np.full(self._next, ACTIVATION, dtype=np.int8)
        for block, category in self.categories.items():
            lookup[block] = category
        return Trace(
            ops=np.asarray(self._ops, dtype=np.int8),
            ids=ids,
            sizes=np.asarray(self._sizes, dtype=np.int64),
            categories=lookup[ids] if len(ids) else np.zeros(0, dtype=np.int8),
            marks=tuple(self.marks),
            flops=tuple((name, float(value)) for name, value in self.flops.items()),
            grad_bytes=grad_bytes,
            carry=carry,
            batch_size=batch_size,
            stub_units=self.stub_units,
            units_per_period=self.units_per_period,
            host_sizes=tuple(self.host_sizes),
        )


_FLOP_FORMULAS: dict[object, object] = {}  # op -> torch.utils.flop_counter formula or None
_UNKNOWN = object()
_ADD = torch.ops.aten.add.Tensor
_CONVOLUTIONS = frozenset({torch.ops.aten.convolution, torch.ops.aten.convolution_backward})
_ADD_INPLACE = torch.ops.aten.add_.Tensor


def _in_backward() -> bool:
    """Inside autograd's engine, outside any recomputation (grad mode off)."""
    return torch._C._current_graph_task_id() != -1 and not torch.is_grad_enabled()


def _use_counts(tensor: torch.Tensor) -> tuple[int, int]:
    return tensor._use_count(), torch._C._storage_Use_Count(tensor.untyped_storage()._cdata)


def _dense(tensor: torch.Tensor) -> bool:
    from torch._prims_common import is_non_overlapping_and_dense_or_false

    return bool(is_non_overlapping_and_dense_or_false(tensor))


_ACTIVE: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar("planner_recorder", default=None)


def active_recorder() -> Recorder | None:
    """The recorder of the step being traced, or None (workloads use it to mark
    periods and skip repeated work, e.g. a chunked encoder's chunks)."""
    return _ACTIVE.get()
