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
) -> ReplayResult:
    """Replay events (op ALLOC/FREE, block id, bytes, category) through the allocator;
    `capacity`: bytes the allocator may hold (None: unlimited).

    An ALLOC of an id that is live, or a FREE of an id that is not, is a ValueError:
    a malformed event stream is a bug in whoever produced it."""
    if kind == "plain":
        return _replay_plain(ops, ids, sizes, categories, capacity)
    if kind != "cuda":
        raise ValueError(f"allocator kind must be 'cuda' or 'plain', got {kind!r}")
    model = CachingAllocatorModel(capacity)
    live: dict[int, tuple[_Block, int]] = {}
    by_cat = [0] * N_CATEGORIES
    peak, peak_event, peak_cats = 0, -1, tuple(by_cat)
    malloc, free, pop = model.malloc, model.free, live.pop
    for index, (op, ident, nbytes, cat) in enumerate(zip(ops, ids, sizes, categories)):
        if op == ALLOC:
            if ident in live:
                raise ValueError(f"event {index}: allocation of live block {ident}")
            block = malloc(nbytes)
            live[ident] = (block, cat)
            by_cat[cat] += block.size
            if model.allocated > peak:
                peak, peak_event, peak_cats = model.allocated, index, tuple(by_cat)
        else:
            entry = pop(ident, None)
            if entry is None:
                raise ValueError(f"event {index}: free of unknown block {ident}")
            by_cat[entry[1]] -= entry[0].size
            free(entry[0])
    return ReplayResult(peak, model.reserved_peak, peak_cats, peak_event, model.segments, model.oom, model.released)


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
