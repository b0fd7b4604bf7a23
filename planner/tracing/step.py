"""Drive one training step of a workload under the recorder: build (or reuse) the model
on the meta device, then setup, data, forward under emulated autocast, backward,
optimizer step and zero_grad (`run_step`). See planner/tracing/recorder.py for what is recorded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext

import torch
from torch import nn

from planner.tracing.autocast import LOWER_DTYPES, CudaAutocastEmulation
from planner.errors import PlannerError
from planner.tracing.recorder import (
    _ACTIVE,
    ACTIVATION,
    GRADIENT,
    INPUT,
    OPTIMIZER_STATE,
    PARAMETER,
    Recorder,
    Trace,
    TraceError,
)
from planner.workload import ModelSpec, StepSpec, Workload


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
    planner traces one step and synthesizes the rest (`planner.tracing.synthesis`); more steps
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
    """The tensors of a batch: a tensor, or tuples, lists, dicts, dataclasses of them."""
    if isinstance(batch, torch.Tensor):
        return [batch]
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        batch = [getattr(batch, f.name) for f in dataclasses.fields(batch)]
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        return [t for item in batch for t in _batch_tensors(item)]
    return []


def _blocks_of(recorder: Recorder, tensors: list[torch.Tensor]) -> list[int]:
    return [b for b in (recorder.block_of(t) for t in tensors) if b is not None]


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
