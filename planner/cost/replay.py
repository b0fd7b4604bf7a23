"""Event streams replayed through the caching-allocator model (planner.cost.allocator):
`replay` (exact, or with the small pool packed into a running sum; `kind="plain"`: the
host allocator, every tensor its own exact allocation), and `needed_capacity`, the
smallest capacity at which a stream runs without an out-of-memory, by bisection."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from planner.cost.allocator import (ALLOC, MIN_BLOCK, N_CATEGORIES, SMALL_BUFFER, SMALL_SIZE, Block,
                                    CachingAllocatorModel, OutOfMemory, ReplayResult)

NEEDED_TOLERANCE = 32 << 20  # bisection of `needed_capacity` stops within 32 MiB

def replay(
    ops: Sequence[int],
    ids: Sequence[int],
    sizes: Sequence[int],
    categories: Sequence[int],
    *,
    kind: str = "cuda",
    capacity: int | None = None,
    small_pool: str = "exact",
    expandable: bool = False,
    count_from: int | None = None,
    stop_on_oom: bool = False,
) -> ReplayResult:
    """Replay events (op ALLOC/FREE, block id, bytes, category) through the allocator;
    `capacity`: bytes the allocator may hold (None: unlimited); `expandable`: expandable
    segments; `count_from`: the event from which retries also count as `retries_late`;
    `stop_on_oom`: return at the first out-of-memory (only `oom` is meaningful then).

    `small_pool="packed"` (fast): the large pool is replayed exactly and the small pool,
    which never shares a block with it and always hands out exactly the rounded size, as
    a running sum of rounded sizes; its reserved bytes are estimated as its peak rounded
    up to 2 MiB segments plus one (within a few MiB of the exact replay, see
    tests/test_trace.py). About 60% of a training step's allocations are small.

    An ALLOC of an id that is live, or a FREE of an id that is not, is a ValueError:
    a malformed event stream is a bug in whoever produced it."""
    if kind == "plain":
        return _replay_plain(*(x.tolist() if isinstance(x, np.ndarray) else x for x in (ops, ids, sizes, categories)),
                             capacity)
    if kind != "cuda":
        raise ValueError(f"allocator kind must be 'cuda' or 'plain', got {kind!r}")
    late = len(ops) if count_from is None else count_from
    try:
        return _replay_cuda(ops, ids, sizes, categories, capacity, small_pool, expandable, late, stop_on_oom)
    except OutOfMemory:
        return ReplayResult(0, 0, (0,) * N_CATEGORIES, -1, 0, oom=True)


def _replay_cuda(ops, ids, sizes, categories, capacity, small_pool, expandable, late, stop) -> ReplayResult:
    if small_pool == "packed":
        packed = _replay_packed(ops, ids, sizes, categories, capacity, expandable, late, stop)
        if packed is not None:
            return packed
    elif small_pool != "exact":
        raise ValueError(f"small_pool must be 'exact' or 'packed', got {small_pool!r}")
    ops, ids, sizes, categories = (list(x) if not isinstance(x, np.ndarray) else x.tolist()
                                   for x in (ops, ids, sizes, categories))
    model = CachingAllocatorModel(capacity, expandable=expandable, stop_on_oom=stop)
    live: dict[int, Block] = {}
    held: list[int] = []  # block bytes handed out, per allocation
    peak, peak_event = 0, -1
    early = None
    malloc, free, pop, hold = model.malloc, model.free, live.pop, held.append
    for index, (op, ident, nbytes) in enumerate(zip(ops, ids, sizes)):
        if index == late:
            early = model.retries
        if op == ALLOC:
            if ident in live:
                raise ValueError(f"event {index}: allocation of live block {ident}")
            block = live[ident] = malloc(nbytes)
            hold(block.size)
            if model.allocated > peak:
                peak, peak_event = model.allocated, index
        else:
            block = pop(ident, None)
            if block is None:
                raise ValueError(f"event {index}: free of unknown block {ident}")
            free(block)
    by_category = _live_by_category(ops, ids, categories, held, peak_event)
    return ReplayResult(peak, model.reserved_peak, by_category, peak_event, model.segments, model.oom, model.released,
                        model.retries, model.retries - (model.retries if early is None else early))


def _replay_packed(ops, ids, sizes, categories, capacity, expandable, late, stop) -> ReplayResult | None:
    """The "packed" small pool (see `replay`); None where it does not apply (ids used
    twice): the caller replays exactly. With a capacity, the large pool may hold what
    the small pool's estimated segments leave of it."""
    prepared = _pack(ops, ids, sizes)
    if prepared is None:
        return None
    ops_a, small, small_now, small_reserved, large, large_events, rounded = prepared
    if stop and capacity is not None and small_reserved > capacity:
        raise OutOfMemory
    model = CachingAllocatorModel(None if capacity is None else max(capacity - small_reserved, 0),
                                  expandable=expandable, stop_on_oom=stop)
    late_at = int(np.searchsorted(large, late))  # first large event at or after `late`
    early = None
    held = rounded.tolist()
    live: dict[int, Block] = {}
    after: list[int] = []
    malloc, free, pop, note = model.malloc, model.free, live.pop, after.append
    for n, (op, ident, k) in enumerate(zip(*large_events)):
        if n == late_at:
            early = model.retries
        if op == ALLOC:
            if ident in live:
                raise ValueError(f"allocation of live block {ident}")
            block = live[ident] = malloc(held[k])
            held[k] = block.size
        else:
            free(pop(ident))
        note(model.allocated)
    retries_late = model.retries - (model.retries if early is None else early)
    if stop:  # a bisection probe: only whether it ran, its retries and its cache matter
        return ReplayResult(0, model.reserved_peak + small_reserved, (0,) * N_CATEGORIES, -1, model.segments,
                            model.oom, model.released, model.retries, retries_late)
    large_now = np.zeros(len(ops_a), dtype=np.int64)
    large_now[large] = after
    # carry the large pool's allocated bytes forward to the events in between
    last = np.maximum.accumulate(np.where(~small, np.arange(len(ops_a)), -1))
    total = np.where(last >= 0, large_now[np.maximum(last, 0)], 0) + small_now
    peak_event = int(np.argmax(total))
    return ReplayResult(
        allocated_peak=int(total[peak_event]),
        reserved_peak=model.reserved_peak + small_reserved,
        peak_by_category=_live_by_category(ops, ids, categories, held, peak_event),
        peak_event=peak_event,
        segments=model.segments + small_reserved // SMALL_BUFFER,
        oom=model.oom or (capacity is not None and small_reserved > capacity),
        released=model.released,
        retries=model.retries,
        retries_late=retries_late,
    )


_PACKED: list = [None]  # the last stream packed: (ops, ids, sizes, packing); probes reuse it


def _pack(ops, ids, sizes):
    """The numpy work of a packed replay that does not depend on the capacity: memoized
    for the last stream (the same array objects, as a bisection passes them)."""
    last = _PACKED[0]
    if last is not None and last[0] is ops and last[1] is ids and last[2] is sizes:
        return last[3]
    ops_a, ids_a = np.asarray(ops), np.asarray(ids)
    allocs = np.flatnonzero(ops_a == ALLOC)
    if len(allocs) == 0 or len(np.unique(ids_a[allocs])) != len(allocs):
        return None
    rounded = np.maximum(MIN_BLOCK, (np.asarray(sizes)[allocs] + MIN_BLOCK - 1) // MIN_BLOCK * MIN_BLOCK)
    by_id = np.full(int(ids_a.max()) + 1, -1, dtype=np.int64)
    by_id[ids_a[allocs]] = np.arange(len(allocs))
    ordinal = by_id[ids_a]  # (E,) which allocation each event names
    if np.any(ordinal < 0):
        return None  # a free of an unknown block: let the exact replay report it
    small = rounded[ordinal] <= SMALL_SIZE  # (E,)
    sign = np.where(ops_a == ALLOC, 1, -1)
    small_now = np.cumsum(np.where(small, sign * rounded[ordinal], 0))  # (E,) small pool allocated
    small_reserved = (-(-int(small_now.max(initial=0)) // SMALL_BUFFER) + 1) * SMALL_BUFFER
    large = np.flatnonzero(~small)
    large_events = (ops_a[large].tolist(), ids_a[large].tolist(), ordinal[large].tolist())
    packing = (ops_a, small, small_now, small_reserved, large, large_events, rounded)
    if isinstance(ops, np.ndarray) and isinstance(ids, np.ndarray) and isinstance(sizes, np.ndarray):
        _PACKED[0] = (ops, ids, sizes, packing)
    return packing


def needed_capacity(run: Callable[[int | None], ReplayResult], *, tolerance: int = NEEDED_TOLERANCE,
                    verdict: tuple[int, int] | None = None) -> tuple[int, ReplayResult, ReplayResult]:
    """The smallest capacity (within `tolerance`) at which `run(capacity)`, a replay of
    one stream, has no out-of-memory: bisection between its allocated peak (nothing can
    run below it) and its unlimited reserved peak (never constrained). `verdict`: the
    capacities (low, high) between which a fit is decided; a stream whose allocated
    peak is above `high` (fits nowhere) or whose reserved peak is below `low` (fits
    anyway) is bisected to within 1 % of its allocated peak instead. Returns the
    capacity, the replay there and the unlimited replay."""
    free = run(None)
    if verdict is not None and not (free.allocated_peak <= verdict[1] and free.reserved_peak >= verdict[0]):
        tolerance = max(tolerance, free.allocated_peak // 100)
    low, high, at_high = free.allocated_peak, free.reserved_peak, free
    while high - low > tolerance:
        middle = (low + high) // 2
        probe = run(middle)
        if probe.oom:
            low = middle
        else:
            high, at_high = middle, probe
    return high, at_high, free


def _live_by_category(ops, ids, categories, held, at: int) -> tuple[int, ...]:
    """Bytes of the blocks live just after event `at`, per category: the allocations
    that are the last event of their id up to `at` (vectorized)."""
    if at < 0:
        return (0,) * N_CATEGORIES
    ops_a, ids_a = np.asarray(ops[: at + 1]), np.asarray(ids[: at + 1])
    _, first_from_end = np.unique(ids_a[::-1], return_index=True)
    last = at - first_from_end  # (blocks,) last event of each id
    last = last[ops_a[last] == ALLOC]
    allocs = np.flatnonzero(ops_a == ALLOC)
    ordinal = np.searchsorted(allocs, last)  # which allocation, in `held` order
    sums = np.bincount(np.asarray(categories[: at + 1])[last], weights=np.asarray(held)[ordinal],
                       minlength=N_CATEGORIES)
    return tuple(int(x) for x in sums[:N_CATEGORIES])


def _replay_plain(ops, ids, sizes, categories, capacity) -> ReplayResult:
    live: dict[int, tuple[int, int]] = {}
    by_cat = [0] * N_CATEGORIES
    current = peak = 0
    peak_event, peak_cats = -1, tuple(by_cat)
    for index, (op, ident, nbytes, cat) in enumerate(zip(ops, ids, sizes, categories)):
        if op == ALLOC:
            if ident in live:
                raise ValueError(f"event {index}: allocation of live block {ident}")
            live[ident] = (nbytes, cat)
            by_cat[cat] += nbytes
            current += nbytes
            if current > peak:
                peak, peak_event, peak_cats = current, index, tuple(by_cat)
        else:
            entry = live.pop(ident, None)
            if entry is None:
                raise ValueError(f"event {index}: free of unknown block {ident}")
            by_cat[entry[1]] -= entry[0]
            current -= entry[0]
    return ReplayResult(peak, peak, peak_cats, peak_event, 0, capacity is not None and peak > capacity)
