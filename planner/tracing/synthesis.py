"""Event streams for the allocator, assembled from traced steps.

A traced step (`planner.tracing.recorder.Trace`) is the first step of training. What the caching
allocator sees in a run is that step followed by steady-state steps, so from one trace:

    setup | step 1: micro_1 [micro_2] opt | step 2: micro_1 [micro_2] opt (no new state)

* micro: data + forward + backward of one micro-batch. Each copy allocates fresh block
  ids; after its data phase it frees the previous micro-batch's leftovers (`carry`:
  the batch and the loss the training loop rebinds).
* micro_2 exists when the candidate accumulates gradients (accumulation >= 2): the
  gradients already exist, so each gradient the backward produced is a temporary that
  is added into `.grad` and freed (AccumulateGrad's in-place `variable.grad += new`);
  further micro-batches repeat micro_2 exactly, so two are enough for the peak.
* opt: optimizer step and zero_grad; it frees the gradients of its step. Optimizer state
  allocated in step 1 persists; step 2 allocates none (Adam's moments, momentum).

`extrapolate` gives the trace of any batch size from traces at two batch sizes: the same
ops run on tensors whose sizes are affine in the batch size (PyTorch ops are
shape-polymorphic), so every event's size is too. It refuses traces of different
structure (a workload whose ops depend on the batch size): trace directly then.
tests/test_trace.py checks both against directly traced multi-step runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from planner.cost.allocator import ALLOC, FREE
from planner.tracing.recorder import ACTIVATION, GRADIENT, OPTIMIZER_STATE, PARAMETER, STUB, WORKSPACE, Trace


class StructureMismatch(ValueError):
    """Two traces differ in more than sizes; extrapolation does not apply."""


@dataclass(frozen=True, eq=False)
class Events:
    ops: np.ndarray
    ids: np.ndarray
    sizes: np.ndarray
    categories: np.ndarray
    last_step: int = 0  # index of the first event of the last optimizer step (steady_state)

    def __len__(self) -> int:
        return len(self.ops)

    def lists(self) -> tuple[list[int], list[int], list[int], list[int]]:
        return self.ops.tolist(), self.ids.tolist(), self.sizes.tolist(), self.categories.tolist()


def _concat(parts: list[Events]) -> Events:
    return Events(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("ops", "ids", "sizes", "categories")))


def _slice(trace: Trace, start: int, stop: int) -> Events:
    return Events(trace.ops[start:stop], trace.ids[start:stop], trace.sizes[start:stop], trace.categories[start:stop])


def steady_state(trace: Trace, accumulation: int = 1) -> Events:
    """The allocator's view of two optimizer steps of `accumulation` micro-batches each."""
    if accumulation < 1:
        raise ValueError(f"accumulation must be >= 1, got {accumulation}")
    data, fwd, opt, end = (trace.mark(m) for m in ("data", "forward", "optimizer", "end"))
    n_blocks = int(trace.ids.max()) + 1 if len(trace) else 0
    setup_blocks = int(trace.ids[: data][trace.ops[:data] == ALLOC].max()) + 1 if data else 0
    alloc_at = np.full(n_blocks, -1, dtype=np.int64)
    allocs = np.flatnonzero(trace.ops == ALLOC)
    alloc_at[trace.ids[allocs]] = allocs
    in_micro = (alloc_at >= data) & (alloc_at < opt)  # (N,) block allocated by the micro-batch
    is_grad = np.zeros(n_blocks, dtype=bool)
    is_grad[trace.ids[trace.categories == GRADIENT]] = True
    carry = np.asarray(trace.carry, dtype=np.int64)

    micro = _slice(trace, data, opt)
    optimizer = _slice(trace, opt, end)
    parts = [_slice(trace, 0, data)]
    copy = 0
    previous_micro: int | None = None
    last_step = 0
    for step in (1, 2):
        last_step = sum(len(p) for p in parts)
        fresh: int | None = None
        for m in range(min(accumulation, 2)):
            copy += 1
            shifted = _shift(micro, copy * n_blocks, setup_blocks)
            if m == 1:
                shifted = _gradients_as_temporaries(shifted)
            head, tail = _split(shifted, fwd - data)
            parts.append(head)
            if previous_micro is not None and len(carry):
                ids = carry + previous_micro * n_blocks
                parts.append(Events(np.full(len(ids), FREE, np.int8), ids, np.zeros(len(ids), np.int64),
                                    trace.categories[alloc_at[carry]]))
            parts.append(tail)
            previous_micro = copy
            fresh = copy if fresh is None else fresh
        copy += 1
        parts.append(_optimizer_copy(optimizer, copy, n_blocks, setup_blocks, in_micro, is_grad,
                                     fresh, previous_micro, drop_state=step == 2))
    return replace(_concat(parts), last_step=last_step)


def with_state(trace: Trace, sizes: tuple[int, ...]) -> Trace:
    """`trace` with blocks of `sizes` bytes allocated first and kept (parameters or
    buffers the traced model did not have); existing block ids move up by len(sizes),
    so setup blocks keep the lowest ids (`steady_state` relies on it)."""
    if not sizes:
        return trace
    k = len(sizes)
    return replace(
        trace,
        ops=np.concatenate([np.full(k, ALLOC, np.int8), trace.ops]),
        ids=np.concatenate([np.arange(k, dtype=np.int64), trace.ids + k]),
        sizes=np.concatenate([np.asarray(sizes, dtype=np.int64), trace.sizes]),
        categories=np.concatenate([np.full(k, PARAMETER, np.int8), trace.categories]),
        marks=tuple((label, index + k) for label, index in trace.marks),
        carry=tuple(b + k for b in trace.carry),
    )


def with_workspaces(events: Events, cublas: tuple[int, ...], cudnn: int) -> Events:
    """`events` with the workspaces the caching allocator hands out: the traced cuDNN
    workspace blocks (size 0 in a trace) get `cudnn` bytes (dropped where 0), and one
    block per cuBLAS (handle, stream) in `cublas` is allocated first and never freed
    (CublasHandlePool.cpp keeps them for the process's life)."""
    is_ws = events.categories == WORKSPACE
    if cudnn > 0:
        sizes = np.where(is_ws & (events.ops == ALLOC), cudnn, events.sizes)
        body = Events(events.ops, events.ids, sizes, events.categories, events.last_step)
    else:
        keep = ~is_ws
        body = Events(events.ops[keep], events.ids[keep], events.sizes[keep], events.categories[keep],
                      int(np.count_nonzero(keep[: events.last_step])))
    if not cublas:
        return body
    first = int(events.ids.max()) + 1 if len(events) else 0
    head = Events(np.full(len(cublas), ALLOC, np.int8), np.arange(first, first + len(cublas), dtype=np.int64),
                  np.asarray(cublas, dtype=np.int64), np.full(len(cublas), WORKSPACE, np.int8))
    return replace(_concat([head, body]), last_step=body.last_step + len(cublas))


def _shift(events: Events, offset: int, setup_blocks: int) -> Events:
    ids = np.where(events.ids >= setup_blocks, events.ids + offset, events.ids)
    return Events(events.ops, ids, events.sizes, events.categories)


def _split(events: Events, at: int) -> tuple[Events, Events]:
    cut = lambda a, b: Events(events.ops[a:b], events.ids[a:b], events.sizes[a:b], events.categories[a:b])  # noqa: E731
    return cut(0, at), cut(at, len(events))


def _gradients_as_temporaries(events: Events) -> Events:
    """Each gradient allocation becomes an activation freed right away (accumulation)."""
    where = np.flatnonzero((events.ops == ALLOC) & (events.categories == GRADIENT))
    categories = events.categories.copy()
    categories[where] = ACTIVATION
    n = len(where)
    return Events(
        np.insert(events.ops, where + 1, np.full(n, FREE, np.int8)),
        np.insert(events.ids, where + 1, events.ids[where]),
        np.insert(events.sizes, where + 1, np.zeros(n, np.int64)),
        np.insert(categories, where + 1, np.full(n, ACTIVATION, np.int8)),
    )


def _optimizer_copy(events, copy, n_blocks, setup_blocks, in_micro, is_grad, fresh, last, *, drop_state) -> Events:
    ids = events.ids
    from_micro = in_micro[ids]
    grads = from_micro & is_grad[ids]
    new = np.where(ids >= setup_blocks, ids + copy * n_blocks, ids)
    new = np.where(from_micro, ids + last * n_blocks, new)
    new = np.where(grads, ids + fresh * n_blocks, new)
    keep = np.ones(len(ids), dtype=bool)
    if drop_state:
        keep = ~((events.ops == ALLOC) & (events.categories == OPTIMIZER_STATE))
    return Events(events.ops[keep], new[keep], events.sizes[keep], events.categories[keep])


def extrapolate(first: Trace, second: Trace, batch_size: int) -> Trace:
    """The trace at `batch_size` from traces at two other batch sizes (event sizes and
    FLOPs affine in the batch size). Raises StructureMismatch."""
    b1, b2 = first.batch_size, second.batch_size
    if b1 == b2:
        raise ValueError("extrapolation needs two different batch sizes")
    if not first.same_structure(second) or first.grad_bytes != second.grad_bytes:
        raise StructureMismatch(f"traces at batch {b1} and {b2} have different ops")
    if batch_size == b1:
        return first
    if batch_size == b2:
        return second
    delta = second.sizes - first.sizes
    scaled = delta * (batch_size - b1)
    if np.any(scaled % (b2 - b1)):
        raise StructureMismatch(f"event sizes are not affine in the batch size between {b1} and {b2}")
    sizes = first.sizes + scaled // (b2 - b1)
    if np.any(sizes < 0):
        raise StructureMismatch(f"negative sizes extrapolating to batch {batch_size}")
    units = (second.stub_units - first.stub_units) * (batch_size - b1)
    if units % (b2 - b1) or first.stub_units + units // (b2 - b1) < 0:
        raise StructureMismatch(f"skipped work is not affine in the batch size between {b1} and {b2}")
    t = (batch_size - b1) / (b2 - b1)
    flops = tuple((name, a + (b - a) * t) for (name, a), (_, b) in zip(first.flops, second.flops))
    host = np.asarray(first.host_sizes, dtype=np.int64)
    host_scaled = (np.asarray(second.host_sizes, dtype=np.int64) - host) * (batch_size - b1)
    if np.any(host_scaled % (b2 - b1)):
        raise StructureMismatch(f"offloaded sizes are not affine in the batch size between {b1} and {b2}")
    host_sizes = tuple(int(v) for v in host + host_scaled // (b2 - b1))
    return Trace(first.ops, first.ids, sizes, first.categories, first.marks, flops, first.grad_bytes,
                 first.carry, batch_size, first.stub_units + units // (b2 - b1), first.units_per_period, host_sizes)


def expand_periods(trace: Trace) -> Trace:
    """Synthesize the periods a workload skipped at trace time (`Recorder.stub`).

    The workload ran periods 0, 1, 2 of a repeated computation for real (their forward,
    marked "period:forward:i" .. "period:forward-end:i", and their recomputation in
    backward, marked "period:recompute:i", processed in reverse) and put one stand-in
    tensor in place of the rest. The forward of period 2 (template) is copied R times
    just before itself, the backward of period 1 (template) R times just before itself
    (period 2's backward runs first, as the last period's would). A copy allocates fresh
    block ids and frees: its own blocks where the template frees its own; its
    predecessor's blocks where the template frees its predecessor's (same allocation
    position: the template then frees the last copy's); in backward, its forward copy's
    blocks where the template frees its own forward's. Template blocks freed elsewhere
    (after the loop, say) are freed there for every copy too. Stand-in events are
    dropped. Raises StructureMismatch when the templates do not repeat their
    predecessors."""
    keep = trace.categories != STUB
    if trace.stub_units == 0:
        return trace if keep.all() else _assemble(trace, trace.ids, keep, {}, trace.flops)
    repeats = trace.repeats
    forward, backward = _periods(trace, "forward"), _periods(trace, "recompute")
    (tf, pf), (tb, pb) = _templates(forward, backward)  # pb: processed first in backward
    ids, ops = trace.ids, trace.ops
    blocks = {name: _allocated(trace, span) for name, span in
              (("tf", forward[tf]), ("pf", forward[pf]), ("tb", backward[tb]), ("pb", backward[pb]))}
    for template, pred in (("tf", "pf"), ("tb", "pb")):
        if not np.array_equal(trace.sizes[blocks[template][1]], trace.sizes[blocks[pred][1]]):
            raise StructureMismatch(f"period {template} does not repeat its predecessor's allocations")
    role = {}  # block id -> (period name, allocation position in the period)
    for name, (block_ids, _) in blocks.items():
        role.update({int(b): (name, k) for k, b in enumerate(block_ids)})
    base = int(ids.max()) + 1
    n_tf, n_tb = len(blocks["tf"][0]), len(blocks["tb"][0])

    def f_id(j: int, k: int) -> int:  # forward copy j (1..R), position k
        return base + (j - 1) * n_tf + k

    def g_id(j: int, k: int) -> int:  # backward copy j
        return base + repeats * n_tf + (j - 1) * n_tb + k

    retarget = ids.copy()
    insert: dict[int, list[Events]] = {}
    free_at = np.full(base, -1, np.int64)
    free_at[ids[ops == FREE]] = np.flatnonzero(ops == FREE)
    chains = {}
    for template, pred, own, counterpart in (("tf", "pf", f_id, None), ("tb", "pb", g_id, f_id)):
        span = forward[tf] if template == "tf" else backward[tb]
        events = [(e, *role.get(int(ids[e]), (None, None))) for e in range(*span)]
        chains[template] = {k for e, r, k in events if ops[e] == FREE and r == pred}
        copies = []
        for j in range(1, repeats + 1):
            picked, new_ids = [], []
            for e, r, k in events:
                if r == template:
                    new = own(j, k)
                elif r == pred and ops[e] == FREE:
                    new = int(blocks[pred][0][k]) if j == 1 else own(j - 1, k)
                elif r == "pf" and counterpart is not None and ops[e] == FREE:
                    new = counterpart(repeats + 1 - j, k)
                else:
                    continue  # a free of a block that is not periodic: it happens once
                picked.append(e)
                new_ids.append(new)
            picked = np.asarray(picked, np.int64)
            copies.append(Events(ops[picked], np.asarray(new_ids, np.int64), trace.sizes[picked], trace.categories[picked]))
        insert.setdefault(span[0], []).extend(copies)
        for k in chains[template]:  # the template now follows the last copy
            retarget[free_at[blocks[pred][0][k]]] = own(repeats, k)
    counterpart_k = {k for e in range(*backward[tb]) if ops[e] == FREE
                     for r, k in [role.get(int(ids[e]), (None, None))] if r == "pf"}
    for template, own, handled in (("tf", f_id, chains["tf"] | counterpart_k), ("tb", g_id, chains["tb"])):
        span = forward[tf] if template == "tf" else backward[tb]
        for k, block in enumerate(blocks[template][0]):
            q = free_at[block]
            if q < 0 or span[0] <= q < span[1] or k in handled:
                continue
            copies_free = np.asarray([own(j, k) for j in range(1, repeats + 1)], np.int64)
            insert.setdefault(int(q), []).append(Events(np.full(repeats, FREE, np.int8), copies_free,
                                                         np.zeros(repeats, np.int64),
                                                         np.full(repeats, trace.categories[q], np.int8)))
    return _assemble(trace, retarget, keep, insert, _expanded_flops(trace, tf, tb))


def expanded_flops(trace: Trace) -> float:
    """Total FLOPs of the trace once its skipped periods are filled in."""
    if trace.stub_units == 0:
        return trace.total_flops
    (tf, _), (tb, _) = _templates(_periods(trace, "forward"), _periods(trace, "recompute"))
    return sum(value for _, value in _expanded_flops(trace, tf, tb))


def _expanded_flops(trace: Trace, tf: int, tb: int) -> tuple[tuple[str, float], ...]:
    """FLOPs scale with the work itself (a shorter last period counts its share), memory
    with whole periods."""
    share = 1 + trace.stub_units / trace.units_per_period
    scale = {f"period:forward:{tf}": share, f"period:recompute:{tb}": share}
    return tuple((name, value * scale.get(name, 1)) for name, value in trace.flops)


def _templates(forward: dict, backward: dict) -> tuple[tuple[int, int], tuple[int, int]]:
    """((forward template, its predecessor), (backward template, its predecessor))."""
    f_order, b_order = sorted(forward), list(backward)
    if len(f_order) < 3 or len(b_order) < 3 or b_order[:2] != f_order[:-3:-1]:
        raise StructureMismatch(f"a periodic trace needs 3 real periods; forward {f_order}, backward {b_order}")
    return (f_order[-1], f_order[-2]), (b_order[1], b_order[0])


def _periods(trace: Trace, kind: str) -> dict[int, tuple[int, int]]:
    """index -> (first event, end) of each period of `kind`, in trace order."""
    spans: dict[int, tuple[int, int]] = {}
    marks = trace.marks
    for n, (label, start) in enumerate(marks):
        parts = label.split(":")
        if len(parts) == 3 and parts[0] == "period" and parts[1] == kind:
            end = marks[n + 1][1] if n + 1 < len(marks) else len(trace)
            if kind == "forward":
                end = next(i for lab, i in marks[n + 1:] if lab == f"period:forward-end:{parts[2]}")
            spans[int(parts[2])] = (start, end)
    return spans


def _allocated(trace: Trace, span: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    idx = np.arange(*span)[trace.ops[span[0]:span[1]] == ALLOC]
    return trace.ids[idx], idx


def _assemble(trace: Trace, ids: np.ndarray, keep: np.ndarray, insert: dict[int, list[Events]], flops) -> Trace:
    """Original events (ids retargeted, `keep` only) with `insert[i]` before event i."""
    parts, cursor, new_index = [], 0, np.zeros(len(trace) + 1, np.int64)
    emitted = 0
    for at in sorted(insert):
        span = np.arange(cursor, at)[keep[cursor:at]]
        new_index[cursor:at + 1] = emitted + np.cumsum(np.r_[0, keep[cursor:at]])
        parts.append(Events(trace.ops[span], ids[span], trace.sizes[span], trace.categories[span]))
        emitted += len(span)
        for chunk in insert[at]:
            parts.append(chunk)
            emitted += len(chunk)
        cursor = at
    span = np.arange(cursor, len(trace))[keep[cursor:]]
    new_index[cursor:] = emitted + np.cumsum(np.r_[0, keep[cursor:]])
    parts.append(Events(trace.ops[span], ids[span], trace.sizes[span], trace.categories[span]))
    events = _concat(parts)
    marks = tuple((label, int(new_index[i])) for label, i in trace.marks if not label.startswith("period:"))
    return Trace(events.ops, events.ids, events.sizes, events.categories, marks, flops, trace.grad_bytes,
                 trace.carry, trace.batch_size, host_sizes=trace.host_sizes)


def with_repeats(trace: Trace, repeats: int) -> Trace:
    """The same trace with `repeats` skipped periods (a cheaper stand-in for many)."""
    from dataclasses import replace

    return replace(trace, stub_units=repeats * trace.units_per_period)
