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
  with `capacity` set, a new segment that does not fit first releases every cached
  segment that is entirely free (`release_cached_blocks`), then is retried; if it still
  does not fit, the replay records an out-of-memory and goes on as if it had fit.

Not modelled: several streams (`record_stream`), `max_split_size_mb`,
`expandable_segments`, garbage collection thresholds, the intermediate retry that frees
only as many cached blocks as needed (`release_available_cached_blocks`).

`replay(..., kind="plain")` is the host (CPU) allocator: every tensor is its own exact
allocation, nothing is cached, reserved == allocated.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_BLOCK = 512  # kMinBlockSize
SMALL_SIZE = 1 << 20  # kSmallSize: largest "small" allocation, 1 MiB
SMALL_BUFFER = 2 << 20  # kSmallBuffer: small-pool segments, 2 MiB
LARGE_BUFFER = 20 << 20  # kLargeBuffer: segments for 1-10 MiB requests, 20 MiB
MIN_LARGE_ALLOC = 10 << 20  # kMinLargeAlloc
ROUND_LARGE = 2 << 20  # kRoundLarge: larger requests are rounded to 2 MiB

ALLOC, FREE = 1, 0
_SHIFT = 48  # free-list keys: size << 48 | address (segment addresses stay below 2**48)
_ADDR = (1 << _SHIFT) - 1
N_CATEGORIES = 8  # category codes are small ints < N_CATEGORIES (see planner.trace)


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


class _Block:
    __slots__ = ("addr", "size", "small", "free", "prev", "next")

    def __init__(self, addr: int, size: int, small: bool) -> None:
        self.addr = addr
        self.size = size
        self.small = small
        self.free = True
        self.prev: _Block | None = None
        self.next: _Block | None = None


class CachingAllocatorModel:
    """The allocator's state: free blocks per pool, sorted by (size, address)."""

    def __init__(self, capacity: int | None = None) -> None:
        # free blocks per pool (large, small), sorted by size then address: key size << 48 | address
        self._keys: tuple[list[int], list[int]] = ([], [])
        self._free: dict[int, _Block] = {}  # address -> free block
        self._top = 0  # next segment address
        self.capacity = capacity
        self.allocated = 0
        self.reserved = 0
        self.reserved_peak = 0
        self.segments = 0
        self.oom = False
        self.released = 0

    def malloc(self, nbytes: int) -> _Block:
        size = MIN_BLOCK if nbytes < MIN_BLOCK else MIN_BLOCK * ((nbytes + MIN_BLOCK - 1) // MIN_BLOCK)
        small = size <= SMALL_SIZE
        keys = self._keys[small]
        i = bisect_left(keys, size << _SHIFT)
        if i < len(keys):
            block = self._free.pop(keys.pop(i) & _ADDR)
        else:
            seg = segment_size(size)
            if self.capacity is not None and self.reserved + seg > self.capacity:
                self._release_cached()
                self.oom = self.oom or self.reserved + seg > self.capacity
            block = _Block(self._top, seg, small)
            self._top += seg
            self.reserved += seg
            if self.reserved > self.reserved_peak:
                self.reserved_peak = self.reserved
            self.segments += 1
        remaining = block.size - size
        if remaining >= MIN_BLOCK if small else remaining > SMALL_SIZE:
            rest = _Block(block.addr + size, remaining, small)
            rest.prev, rest.next = block, block.next
            if block.next is not None:
                block.next.prev = rest
            block.next = rest
            block.size = size
            insort(keys, remaining << _SHIFT | rest.addr)
            self._free[rest.addr] = rest
        block.free = False
        self.allocated += block.size
        return block

    def free(self, block: _Block) -> None:
        self.allocated -= block.size
        block.free = True
        prev, nxt = block.prev, block.next
        if prev is not None and prev.free:
            self._remove(prev)
            block.addr = prev.addr
            block.size += prev.size
            block.prev = prev.prev
            if prev.prev is not None:
                prev.prev.next = block
        if nxt is not None and nxt.free:
            self._remove(nxt)
            block.size += nxt.size
            block.next = nxt.next
            if nxt.next is not None:
                nxt.next.prev = block
        insort(self._keys[block.small], block.size << _SHIFT | block.addr)
        self._free[block.addr] = block

    def _release_cached(self) -> None:
        """cudaFree every segment that is one free block (`release_cached_blocks`)."""
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
) -> ReplayResult:
    """Replay events (op ALLOC/FREE, block id, bytes, category) through the allocator;
    `capacity`: bytes the allocator may hold (None: unlimited).

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
    if small_pool == "packed":
        packed = _replay_packed(ops, ids, sizes, categories, capacity)
        if packed is not None:
            return packed
    elif small_pool != "exact":
        raise ValueError(f"small_pool must be 'exact' or 'packed', got {small_pool!r}")
    ops, ids, sizes, categories = (list(x) if not isinstance(x, np.ndarray) else x.tolist()
                                   for x in (ops, ids, sizes, categories))
    model = CachingAllocatorModel(capacity)
    live: dict[int, _Block] = {}
    held: list[int] = []  # block bytes handed out, per allocation
    peak, peak_event = 0, -1
    malloc, free, pop, hold = model.malloc, model.free, live.pop, held.append
    for index, (op, ident, nbytes) in enumerate(zip(ops, ids, sizes)):
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
    return ReplayResult(peak, model.reserved_peak, by_category, peak_event, model.segments, model.oom, model.released)


def _replay_packed(ops, ids, sizes, categories, capacity) -> ReplayResult | None:
    """The "packed" small pool (see `replay`); None where it does not apply (ids used
    twice, capacity within reach): the caller replays exactly."""
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
    model = CachingAllocatorModel(None)
    large = np.flatnonzero(~small)
    held = rounded.tolist()
    large_now = np.zeros(len(ops_a), dtype=np.int64)
    live: dict[int, _Block] = {}
    after: list[int] = []
    malloc, free, pop, note = model.malloc, model.free, live.pop, after.append
    for op, ident, k in zip(ops_a[large].tolist(), ids_a[large].tolist(), ordinal[large].tolist()):
        if op == ALLOC:
            if ident in live:
                raise ValueError(f"allocation of live block {ident}")
            block = live[ident] = malloc(held[k])
            held[k] = block.size
        else:
            free(pop(ident))
        note(model.allocated)
    large_now[large] = after
    # carry the large pool's allocated bytes forward to the events in between
    last = np.maximum.accumulate(np.where(~small, np.arange(len(ops_a)), -1))
    total = np.where(last >= 0, large_now[np.maximum(last, 0)], 0) + small_now
    peak_event = int(np.argmax(total))
    reserved = model.reserved_peak + small_reserved
    if capacity is not None and reserved > capacity:
        return None
    return ReplayResult(
        allocated_peak=int(total[peak_event]),
        reserved_peak=reserved,
        peak_by_category=_live_by_category(ops, ids, categories, held, peak_event),
        peak_event=peak_event,
        segments=model.segments + small_reserved // SMALL_BUFFER,
    )


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
