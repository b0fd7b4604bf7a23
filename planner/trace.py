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
cross-check). CUDA-specific behaviour is emulated: autocast (`planner.autocast_rules`),
the foreach optimizers CUDA defaults to (`planner.workload.sgd_or_adam`). Kernel-internal
scratch (cuDNN/cuBLAS workspaces) is not a tensor and is added by `planner.overheads`.

One step is traced: setup (parameters), data, forward (+loss), backward, optimizer
(step, zero_grad). The steady state (optimizer state present, the previous batch
replaced, accumulation) is assembled from it by `planner.synthesis`.
"""

from __future__ import annotations

import contextvars
import weakref
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from planner.allocator import ALLOC, FREE
from planner.autocast_rules import LOWER_DTYPES, CudaAutocastEmulation
from planner.errors import PlannerError
from planner.workload import ModelSpec, StepSpec, Workload

PARAMETER, GRADIENT, OPTIMIZER_STATE, ACTIVATION, INPUT, STUB = range(6)
CATEGORY_NAMES = ("parameter", "gradient", "optimizer_state", "activation", "input", "stub")
PHASES = ("setup", "data", "forward", "backward", "optimizer", "end")
TRACE_FORMAT = 1  # bump when the meaning of a trace changes (part of cache keys)


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
            and [n for n, _ in self.flops] == [n for n, _ in other.flops]
        )


class MetaKernelCache:
    """Memoized meta kernels. On the meta device an op's outputs are a pure function of
    its inputs' metadata (shape, stride, offset, dtype) and its other arguments, so a
    functional op (no aliasing or mutation in its schema) seen before with the same
    metadata gets fresh outputs of the recorded metadata without running its kernel;
    PyTorch implements many meta kernels in Python (batch norm, foreach, elementwise
    refs), and a trace repeats the same shapes often (residual blocks, chunks, their
    recomputation). tests/test_trace.py checks traces are identical with and without."""

    def __init__(self) -> None:
        self._entries: dict[tuple, object] = {}
        self._ops: dict[object, bool] = {}
        self.hits = self.misses = 0

    def __call__(self, func, args: tuple, kwargs: dict):
        if not self._cacheable_op(func):
            return func(*args, **kwargs)
        try:
            key = (func, _meta_key(args), _meta_key(kwargs))
            entry = self._entries.get(key)
        except _NotCacheable:
            return func(*args, **kwargs)
        if entry is None:
            self.misses += 1
            out = func(*args, **kwargs)
            if _aliases_input(out, args, kwargs):  # e.g. _unsafe_view: a view its schema hides
                self._ops[func] = False
                return out
            self._entries[key] = _template(out)
            return out
        if entry is _UNCACHEABLE:
            return func(*args, **kwargs)
        self.hits += 1
        return _materialize(entry)

    def _cacheable_op(self, func) -> bool:
        known = self._ops.get(func)
        if known is None:
            schema = func._schema
            known = not schema.is_mutable and all(
                r.alias_info is None and str(r.type) in ("Tensor", "Tensor[]", "Tensor?") for r in schema.returns
            ) and len(schema.returns) > 0
            self._ops[func] = known
        return known


class _NotCacheable(Exception):
    pass


_UNCACHEABLE = object()
_META = torch.device("meta")


def _meta_key(value):
    if isinstance(value, torch.Tensor):
        if value.device != _META or value.layout != torch.strided or type(value) is not torch.Tensor and not isinstance(value, nn.Parameter):
            raise _NotCacheable
        return (tuple(value.shape), value.stride(), value.storage_offset(), value.dtype)
    if isinstance(value, (list, tuple)):
        return (type(value), tuple(_meta_key(v) for v in value))
    if isinstance(value, dict):
        return tuple((k, _meta_key(v)) for k, v in value.items())
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype, torch.device, torch.layout, torch.memory_format)):
        return value
    raise _NotCacheable


def _aliases_input(out, args: tuple, kwargs: dict) -> bool:
    inputs = {id(t.untyped_storage()) for t in _tensors((args, kwargs))}
    return any(id(t.untyped_storage()) in inputs for t in _tensors(out))


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _template(out):
    def one(t):
        if t is None:
            return None
        if not isinstance(t, torch.Tensor) or t.device != _META or t.storage_offset() != 0:
            raise _NotCacheable
        fresh = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=_META)
        if fresh.untyped_storage().nbytes() != t.untyped_storage().nbytes():
            raise _NotCacheable
        return (tuple(t.shape), t.stride(), t.dtype)

    try:
        if isinstance(out, (tuple, list)):
            return (type(out), tuple(one(t) for t in out))
        return one(out)
    except _NotCacheable:
        return _UNCACHEABLE


def _materialize(entry):
    if entry is None:
        return None
    if isinstance(entry[0], type):
        kind, items = entry
        return kind(_materialize(item) for item in items)
    size, stride, dtype = entry
    return torch.empty_strided(size, stride, dtype=dtype, device=_META)


_META_CACHE = MetaKernelCache()


class Recorder(TorchDispatchMode):
    """Records allocations (outputs with a storage not seen before) and frees (storage
    finalizers). `mark(label)` starts a phase; FLOPs are summed per phase."""

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
        self._call = _META_CACHE if cache else (lambda func, args, kwargs: func(*args, **kwargs))
        self.compress = compress  # workloads may skip repeated periods (see `period`, `stub`)
        self.stub_units = 0
        self.units_per_period = 1
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
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.flops[self._phase] += formula(*args, **kwargs, out_val=out)
        self._track(out)
        return out

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
        )


_ADD = torch.ops.aten.add.Tensor
_ADD_INPLACE = torch.ops.aten.add_.Tensor


def _in_backward() -> bool:
    """Inside autograd's engine, outside any recomputation (grad mode off)."""
    return torch._C._current_graph_task_id() != -1 and not torch.is_grad_enabled()


def _use_counts(tensor: torch.Tensor) -> tuple[int, int]:
    return tensor._use_count(), torch._C._storage_Use_Count(tensor.untyped_storage()._cdata)


def _dense(tensor: torch.Tensor) -> bool:
    from torch._prims_common import is_non_overlapping_and_dense_or_false

    return bool(is_non_overlapping_and_dense_or_false(tensor))


def exclusive_use_counts(device: torch.device) -> tuple[int, int] | None:
    """The use counts a gradient has when only autograd's input buffer holds it, as a
    recorder on `device` sees them: probe the textbook case, a leaf used twice, whose two
    gradients the engine adds in place. None if the probe sees no such addition."""
    leaf = torch.zeros(8, device=device, requires_grad=True)
    probe = Recorder(count_flops=False, cache=False)
    with probe:
        loss = (leaf * 2).sum() + (leaf * 3).sum()
        _backward(loss)
    probe.close(batch_size=1, grad_bytes=(), carry=())
    if len(probe.probed) == 1 and probe.probed[0][0] == probe.probed[0][1]:
        return probe.probed[0][0]
    return None


_ACTIVE: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar("planner_recorder", default=None)


def active_recorder() -> Recorder | None:
    """The recorder of the step being traced, or None (workloads use it to mark
    periods and skip repeated work; see lofi.plan_workload)."""
    return _ACTIVE.get()


class Tracer:
    """Traces steps of one workload. Keeps the last model it built (tracing both batch
    sizes and both precisions of a model spec in a row builds it once)."""

    def __init__(self, workload: Workload, *, mode: str = "meta", compress: bool = True) -> None:
        if mode not in ("meta", "fake"):
            raise ValueError(f"trace mode must be 'meta' or 'fake', got {mode!r}")
        self.workload = workload
        self.mode = mode
        self.compress = compress
        self._model: tuple[ModelSpec, nn.Module] | None = None
        self._fake = None

    def trace(self, step: StepSpec, batch_size: int) -> Trace:
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        with self._device_context() as device:
            model = self._model_for(step.model, device)
            try:
                return run_step(self.workload, step, batch_size, model, device, compress=self.compress)
            except PlannerError:
                raise
            except Exception as error:  # the workload's code failed under tracing
                raise TraceError(
                    f"workload {self.workload.key}: cannot trace {step.model.label} "
                    f"{step.precision} batch {batch_size}: {type(error).__name__}: {error}"
                ) from error

    @contextmanager
    def _device_context(self) -> Iterator[torch.device]:
        if self.mode == "meta":
            yield torch.device("meta")
            return
        from torch._subclasses.fake_tensor import FakeTensorMode

        if self._fake is None:
            self._fake = FakeTensorMode()
        with self._fake:
            yield torch.device("cpu")

    def _model_for(self, spec: ModelSpec, device: torch.device) -> nn.Module:
        if self._model is not None and self._model[0] == spec:
            return self._model[1]
        self._model = None
        try:
            model = self.workload.build_model(spec, device)
        except Exception as error:
            raise TraceError(f"workload {self.workload.key}: cannot build {spec.label}: {error}") from error
        self._model = (spec, model)
        return model


def run_step(
    workload: Workload,
    step: StepSpec,
    batch_size: int,
    model: nn.Module,
    device: torch.device,
    *,
    steps: int = 1,
    accumulation: int = 1,
    compress: bool = True,
) -> Trace:
    """Trace setup, then `steps` optimizer steps of `accumulation` micro-batches each:
    data, forward (+loss), backward per micro-batch; optimizer step and zero_grad. The
    planner traces one step and synthesizes the rest (`planner.synthesis`); more steps
    are the reference that synthesis is tested against."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    recorder = Recorder(compress=compress and steps == 1 and accumulation == 1, exclusive=_exclusive(device))
    precision = step.traced_precision
    autocast = CudaAutocastEmulation(LOWER_DTYPES[precision]) if precision in LOWER_DTYPES else None
    batch = loss = None
    grad_bytes: tuple[int, ...] = ()
    with ExitStack() as stack:
        token = _ACTIVE.set(recorder)
        stack.callback(_ACTIVE.reset, token)
        stack.enter_context(recorder)
        if autocast is not None:
            stack.enter_context(autocast)
        recorder.adopt(model.parameters(), PARAMETER)
        recorder.adopt(model.buffers(), PARAMETER)
        optimizer = workload.make_optimizer(model, step)
        for _ in range(steps):
            for _ in range(accumulation):
                recorder.mark("data")
                batch = workload.make_batch(step, batch_size, device)
                for block in _blocks_of(recorder, _batch_tensors(batch)):
                    recorder.categories[block] = INPUT
                recorder.mark("forward")
                with autocast.region() if autocast is not None else nullcontext():
                    loss = workload.loss(model, batch)
                recorder.mark("backward")
                _backward(loss)
                grads = [p.grad for p in params if p.grad is not None]
                recorder.classify(grads, GRADIENT)
                grad_bytes = grad_bytes or tuple(g.untyped_storage().nbytes() for g in grads)
                del grads
            recorder.mark("optimizer")
            optimizer.step()
            recorder.classify(_state_tensors(optimizer), OPTIMIZER_STATE)
            optimizer.zero_grad(set_to_none=True)
            recorder.mark("end")
        carry = tuple(
            b for b in recorder.live_blocks() if recorder.categories.get(b, ACTIVATION) in (ACTIVATION, INPUT)
        )
        trace = recorder.close(batch_size=batch_size, grad_bytes=grad_bytes, carry=carry)
    del loss, batch, optimizer
    return trace


_EXCLUSIVE: dict[str, tuple[int, int] | None] = {}


def _exclusive(device: torch.device) -> tuple[int, int] | None:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    key = f"{device.type}:{any(isinstance(m, FakeTensorMode) for m in _get_current_dispatch_mode_stack())}"
    if key not in _EXCLUSIVE:
        _EXCLUSIVE[key] = exclusive_use_counts(device)
    return _EXCLUSIVE[key]


def _backward(loss: torch.Tensor) -> None:
    """`loss.backward()`, called on the engine directly: `Tensor.backward` would be
    intercepted by the autocast TorchFunctionMode, which pops itself while it runs, and
    the mode must stay on the stack so that checkpoint recomputation sees it."""
    from torch.autograd import Variable

    Variable._execution_engine.run_backward(
        (loss,), (torch.ones_like(loss),), False, False, (), allow_unreachable=True, accumulate_grad=True
    )


def _state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def _batch_tensors(batch) -> list[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        return [t for item in batch for t in _batch_tensors(item)]
    return []


def _blocks_of(recorder: Recorder, tensors: list[torch.Tensor]) -> list[int]:
    return [b for b in (recorder.block_of(t) for t in tensors) if b is not None]
