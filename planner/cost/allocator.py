"""A model of PyTorch's CUDA caching allocator, replayed over traced allocation events.

Pure and deterministic: `replay(events)` returns the allocated and reserved peaks that
`torch.cuda.max_memory_allocated()` / `max_memory_reserved()` would report for the same
sequence of tensor allocations and frees (one device, one stream, default allocator
settings, enough memory that nothing is ever released to the driver).

The rules, from c10/cuda/CUDACachingAllocator.cpp (PyTorch 2.x, `DeviceCachingAllocator`):

* `round_size`: every request is rounded up to a multiple of kMinBlockSize = 512 bytes
  (sizes below 512 become 512; `roundup_power2_divisions` is off by default).
* `get_pool`: rounded sizes <= kSmallSize = 1 MiB go to the small pool, others to the
  large pool; a free block is only reused within its pool.
* `get_free_block`: best fit, the smallest cached free block >= the request (ties: the
  lowest address; blocks are ordered by (size, address)).
* `get_allocation_size` (a new segment from cudaMalloc when nothing fits): small requests
  get a kSmallBuffer = 2 MiB segment; requests < kMinLargeAlloc = 10 MiB get a
  kLargeBuffer = 20 MiB segment; larger ones are rounded up to kRoundLarge = 2 MiB.
* `should_split`: the unused tail of the chosen block becomes a free block of its own if
  it is >= 512 bytes (small pool) or > 1 MiB (large pool); otherwise the whole block is
  handed out and counted as allocated (that is why allocated >= the sum of requests).
* `free_block`: a freed block merges with free neighbours of the same segment.
* Segments are returned to the driver only when a cudaMalloc would exceed the device:
  with `capacity` set (`torch.cuda.set_per_process_memory_fraction`, or the device's
  size), a new segment that does not fit first releases every cached segment that is
  entirely free (`release_cached_blocks`), then is retried; if it still does not fit,
  the replay records an out-of-memory and goes on as if it had fit. Each such retry is
  counted (`retries`, PyTorch's `num_alloc_retries`): a step that retries runs slower
  (cudaFree synchronizes the device).
* `expandable=True` models `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`: each pool
  is one segment whose end grows in place by pages (2 MiB small, 20 MiB large), so free
  space never strands between segments; growing maps pages onto a free block at the end
  when there is one. Releasing unmaps every free block; an allocation later carved from
  unmapped space maps its bytes again (merging mapped and unmapped free space counts
  the merged block unmapped: at most an over-estimate).

`needed_capacity` bisects on `capacity` for the smallest one at which a stream runs
without an out-of-memory: the memory a step needs, as opposed to the cache it keeps
where memory is plentiful (`reserved_peak` of an unlimited replay).

Not modelled: several streams (`record_stream`), `max_split_size_mb`, garbage
collection thresholds, the intermediate retry that frees only as many cached blocks as
needed (`release_available_cached_blocks`), pages only partly used by blocks.

`replay(..., kind="plain")` is the host (CPU) allocator: every tensor is its own exact
allocation, nothing is cached, reserved == allocated.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

MIN_BLOCK = 512  # kMinBlockSize
SMALL_SIZE = 1 << 20  # kSmallSize: largest "small" allocation, 1 MiB
SMALL_BUFFER = 2 << 20  # kSmallBuffer: small-pool segments, 2 MiB
LARGE_BUFFER = 20 << 20  # kLargeBuffer: segments for 1-10 MiB requests, 20 MiB
MIN_LARGE_ALLOC = 10 << 20  # kMinLargeAlloc
ROUND_LARGE = 2 << 20  # kRoundLarge: larger requests are rounded to 2 MiB

NEEDED_TOLERANCE = 32 << 20  # bisection of `needed_capacity` stops within 32 MiB

ALLOC, FREE = 1, 0
_SHIFT = 48  # free-list keys: size << 48 | address (segment addresses stay below 2**48)
_ADDR = (1 << _SHIFT) - 1
N_CATEGORIES = 8  # category codes are small ints < N_CATEGORIES (see planner.tracing.recorder)


def round_size(nbytes: int) -> int:
    """The block size a request of `nbytes` occupies at least (`round_size`)."""
    if nbytes < MIN_BLOCK:
        return MIN_BLOCK
    return MIN_BLOCK * ((nbytes + MIN_BLOCK - 1) // MIN_BLOCK)


def segment_size(rounded: int) -> int:
    """Bytes cudaMalloc'd for a request of `rounded` bytes that no cached block can hold
    (`get_allocation_size`)."""
    if rounded <= SMALL_SIZE:
        return SMALL_BUFFER
    if rounded < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return ROUND_LARGE * ((rounded + ROUND_LARGE - 1) // ROUND_LARGE)


@dataclass(frozen=True)
class ReplayResult:
    allocated_peak: int  # max over time of the bytes in allocated blocks
    reserved_peak: int  # max over time of the bytes in segments
    peak_by_category: tuple[int, ...]  # allocated block bytes per category at allocated_peak
    peak_event: int  # index of the event at which allocated_peak was first reached (-1: none)
    segments: int  # segments created (cudaMalloc calls)
    oom: bool = False  # some segment did not fit `capacity` even after releasing the cache
    released: int = 0  # bytes of cached segments released to make room
    retries: int = 0  # cache releases (`num_alloc_retries`) over the whole stream
    retries_late: int = 0  # of those, at events >= `count_from` (e.g. the last step)


class _OutOfMemory(Exception):
    """A bisection probe ran out of memory: the rest of its stream does not matter."""


class _Block:
    __slots__ = ("addr", "size", "small", "free", "prev", "next", "mapped")

    def __init__(self, addr: int, size: int, small: bool) -> None:
        self.addr = addr
        self.size = size
        self.small = small
        self.free = True
        self.mapped = True  # expandable segments: its pages are mapped
        self.prev: _Block | None = None
        self.next: _Block | None = None


class CachingAllocatorModel:
    """The allocator's state: free blocks per pool, sorted by (size, address)."""

    def __init__(self, capacity: int | None = None, *, expandable: bool = False, stop_on_oom: bool = False) -> None:
        # free blocks per pool (large, small), sorted by size then address: key size << 48 | address
        self._keys: tuple[list[int], list[int]] = ([], [])
        self._free: dict[int, _Block] = {}  # address -> free block
        self._top = 0  # next segment address
        self.capacity = capacity
        self.expandable = expandable
        self._ends: list[_Block | None] = [None, None]  # expandable: last block of each pool's segment
        self._bases = [1 << 46, 1 << 47]  # expandable: where each pool's segment starts (large, small)
        self.allocated = 0
        self.reserved = 0
        self.reserved_peak = 0
        self.segments = 0
        self.oom = False
        self.released = 0
        self.retries = 0
        self.stop_on_oom = stop_on_oom  # raise _OutOfMemory at the first OOM (bisection probes)

    def malloc(self, nbytes: int) -> _Block:
        size = MIN_BLOCK if nbytes < MIN_BLOCK else MIN_BLOCK * ((nbytes + MIN_BLOCK - 1) // MIN_BLOCK)
        small = size <= SMALL_SIZE
        keys = self._keys[small]
        i = bisect_left(keys, size << _SHIFT)
        tail_mapped = True
        if i < len(keys):
            block = self._free.pop(keys.pop(i) & _ADDR)
            if not block.mapped:  # expandable, after a release: map what is handed out
                tail_mapped = False  # the split tail below stays unmapped
                self._grow_reserved(size)
        elif self.expandable:
            block = self._extend(size, small)
        else:
            seg = segment_size(size)
            self._make_room(seg)
            block = _Block(self._top, seg, small)
            self._top += seg
            self._grow_reserved(seg)
            self.segments += 1
        remaining = block.size - size
        if remaining >= MIN_BLOCK if small else remaining > SMALL_SIZE:
            rest = _Block(block.addr + size, remaining, small)
            rest.prev, rest.next = block, block.next
            rest.mapped = tail_mapped
            if block.next is not None:
                block.next.prev = rest
            elif self.expandable:
                self._ends[small] = rest
            block.next = rest
            block.size = size
            insort(keys, remaining << _SHIFT | rest.addr)
            self._free[rest.addr] = rest
        block.free = False
        block.mapped = True
        self.allocated += block.size
        return block

    def _grow_reserved(self, nbytes: int) -> None:
        self._make_room(nbytes)
        self.reserved += nbytes
        if self.reserved > self.reserved_peak:
            self.reserved_peak = self.reserved

    def _make_room(self, nbytes: int) -> None:
        """Before mapping `nbytes` more: release the cache where they would not fit."""
        if self.capacity is not None and self.reserved + nbytes > self.capacity:
            self.retries += 1
            self._release_cached()
            if self.reserved + nbytes > self.capacity:
                self.oom = True
                if self.stop_on_oom:
                    raise _OutOfMemory

    def _extend(self, size: int, small: bool) -> _Block:
        """Expandable segments: grow the pool's segment at its end by whole pages, onto
        the free block at the end if there is one."""
        page = SMALL_BUFFER if small else LARGE_BUFFER
        end = self._ends[small]
        if end is not None and end.free:
            self._remove(end)
            missing = size - end.size
            grow = page * (-(-missing // page))
            if not end.mapped:
                self._grow_reserved(end.size + grow)  # map the whole tail again
                end.mapped = True
            else:
                self._grow_reserved(grow)
            end.size += grow
            return end
        grow = page * (-(-size // page))
        start = self._bases[small] if end is None else end.addr + end.size
        block = _Block(start, grow, small)
        block.prev = end
        if end is not None:
            end.next = block
        else:
            self.segments += 1
        self._ends[small] = block
        self._grow_reserved(grow)
        return block

    def free(self, block: _Block) -> None:
        self.allocated -= block.size
        block.free = True
        prev, nxt = block.prev, block.next
        if prev is not None and prev.free:
            self._remove(prev)
            block.addr = prev.addr
            block.size += prev.size
            block.mapped = block.mapped and prev.mapped
            block.prev = prev.prev
            if prev.prev is not None:
                prev.prev.next = block
        if nxt is not None and nxt.free:
            self._remove(nxt)
            block.size += nxt.size
            block.mapped = block.mapped and nxt.mapped
            block.next = nxt.next
            if nxt.next is not None:
                nxt.next.prev = block
            elif self.expandable:
                self._ends[block.small] = block
        insort(self._keys[block.small], block.size << _SHIFT | block.addr)
        self._free[block.addr] = block

    def _release_cached(self) -> None:
        """cudaFree every segment that is one free block (`release_cached_blocks`);
        expandable segments: unmap every free block."""
        if self.expandable:
            for block in self._free.values():
                if block.mapped:
                    block.mapped = False
                    self.reserved -= block.size
                    self.released += block.size
            return
        whole = [b for b in self._free.values() if b.prev is None and b.next is None]
        for block in whole:
            self._remove(block)
            self.reserved -= block.size
            self.released += block.size

    def _remove(self, block: _Block) -> None:
        keys = self._keys[block.small]
        del keys[bisect_left(keys, block.size << _SHIFT | block.addr)]
        del self._free[block.addr]


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
    except _OutOfMemory:
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
    live: dict[int, _Block] = {}
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
        raise _OutOfMemory
    model = CachingAllocatorModel(None if capacity is None else max(capacity - small_reserved, 0),
                                  expandable=expandable, stop_on_oom=stop)
    late_at = int(np.searchsorted(large, late))  # first large event at or after `late`
    early = None
    held = rounded.tolist()
    live: dict[int, _Block] = {}
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
