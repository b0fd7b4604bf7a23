"""Traces of one workload, as the estimate needs them: from the trace cache, else traced
(grouped by model, so each model is built once); at any batch size, extrapolated from
the two traced ones (`planner.tracing.synthesis.extrapolate`: sizes are affine in the
batch), with the state a cycle's model holds beyond the traced member; and their
steady-state allocator replays (`planner.step_memory`), memoized."""

from __future__ import annotations

import torch

from planner.cost.overheads import Workspaces
from planner.step_memory import StepMemory, step_memory
from planner.tracing.cache import TraceCache, trace_key
from planner.tracing.recorder import Trace
from planner.tracing.step import Tracer
from planner.tracing.synthesis import StructureMismatch, extrapolate, with_state
from planner.workload import ModelSpec, StepSpec, Workload

TRACE_BATCHES = (2, 3)  # traced batch sizes; others are extrapolated (batch 1 too: no batch-1 special cases)


class TraceStore:
    """Traces of one workload: the cache first, else traced (grouped by model, so each
    model is built once), and their allocator replays, memoized."""

    def __init__(self, workload: Workload, cache: TraceCache) -> None:
        self.workload = workload
        self.cache = cache
        self._tracer: Tracer | None = None
        self._replays: dict[tuple, StepMemory] = {}
        self._extra: dict[ModelSpec, tuple[int, ...]] = {}
        self._at_batch: dict[tuple[StepSpec, int], Trace] = {}

    def cached(self, step: StepSpec, batch: int) -> Trace | None:
        return self.cache.get(trace_key(self.workload.key, step, batch))

    def trace(self, step: StepSpec, batch: int) -> Trace:
        step = step.traced()
        found = self.cached(step, batch)
        if found is None:
            if self._tracer is None:
                self._tracer = Tracer(self.workload)
            found = self._tracer.trace(step, batch)
            self.cache.put(trace_key(self.workload.key, step, batch), found)
        return found

    def at_batch(self, step: StepSpec, batch: int) -> Trace:
        """The trace at `batch`: extrapolated from the traced batch sizes, or traced."""
        key = (step, batch)
        if key not in self._at_batch:
            first, second = (self.trace(step, b) for b in TRACE_BATCHES)
            try:
                trace = extrapolate(first, second, batch)
            except StructureMismatch:
                trace = self.trace(step, batch)
            trace = with_state(trace, self.extra_state(step.model))
            self._at_batch = {key: trace}  # keep one: traces are large
        return self._at_batch[key]

    def extra_state(self, spec: ModelSpec) -> tuple[int, ...]:
        """Bytes of each parameter or buffer the model of `spec` holds beyond the traced
        model (`ModelSpec.traced`): a cycle's state for its other members."""
        if not spec.cycle:
            return ()
        if spec not in self._extra:
            def sizes(model_spec: ModelSpec) -> dict[str, int]:
                model = self.workload.build_model(model_spec, torch.device("meta"))
                named = [*model.named_parameters(), *model.named_buffers()]
                return {name: t.untyped_storage().nbytes() for name, t in named}

            full, traced = sizes(spec), sizes(spec.traced)
            self._extra[spec] = tuple(n for name, n in full.items() if traced.get(name) != n)
        return self._extra[spec]

    def step_memory(self, step: StepSpec, batch: int, accumulation: int, kind: str, spaces: Workspaces,
                    expandable: bool = False, verdict: tuple[int, int] | None = None) -> StepMemory:
        """The unlimited replay of the steady state at `batch` and its needed capacity
        (memoized: GPU counts with the same workspaces share them)."""
        key = (step, batch, min(accumulation, 2), kind, spaces, expandable, verdict)
        if key not in self._replays:
            self._replays[key] = step_memory(self.at_batch(step, batch), accumulation, kind, spaces, expandable,
                                             verdict)
        return self._replays[key]
