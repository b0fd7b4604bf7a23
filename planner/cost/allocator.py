"""A model of PyTorch's CUDA caching allocator: its state (`CachingAllocatorModel`), its
rounding and its segment sizes. `planner.cost.replay` runs event streams through it.

Pure and deterministic: `replay(events)` (planner.cost.replay) returns the allocated and reserved peaks that
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

`needed_capacity` (planner.cost.replay) bisects on `capacity` for the smallest one at
which a stream runs without an out-of-memory: the memory a step needs, as opposed to the
cache it keeps where memory is plentiful (`reserved_peak` of an unlimited replay).

Not modelled: several streams (`record_stream`), `max_split_size_mb`, garbage
collection thresholds, the intermediate retry that frees only as many cached blocks as
needed (`release_available_cached_blocks`), pages only partly used by blocks.

`replay(..., kind="plain")` is the host (CPU) allocator: every tensor is its own exact
allocation, nothing is cached, reserved == allocated.
"""

from __future__ import annotations

from bisect import bisect_left, insort
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


class OutOfMemory(Exception):
    """A bisection probe ran out of memory: the rest of its stream does not matter."""


class Block:
    __slots__ = ("addr", "size", "small", "free", "prev", "next", "mapped")

    def __init__(self, addr: int, size: int, small: bool) -> None:
        self.addr = addr
        self.size = size
        self.small = small
        self.free = True
        self.mapped = True  # expandable segments: its pages are mapped
        self.prev: Block | None = None
        self.next: Block | None = None


class CachingAllocatorModel:
    """The allocator's state: free blocks per pool, sorted by (size, address)."""

    def __init__(self, capacity: int | None = None, *, expandable: bool = False, stop_on_oom: bool = False) -> None:
        # free blocks per pool (large, small), sorted by size then address: key size << 48 | address
        self._keys: tuple[list[int], list[int]] = ([], [])
        self._free: dict[int, Block] = {}  # address -> free block
        self._top = 0  # next segment address
        self.capacity = capacity
        self.expandable = expandable
        self._ends: list[Block | None] = [None, None]  # expandable: last block of each pool's segment
        self._bases = [1 << 46, 1 << 47]  # expandable: where each pool's segment starts (large, small)
        self.allocated = 0
        self.reserved = 0
        self.reserved_peak = 0
        self.segments = 0
        self.oom = False
        self.released = 0
        self.retries = 0
        self.stop_on_oom = stop_on_oom  # raise OutOfMemory at the first OOM (bisection probes)

    def malloc(self, nbytes: int) -> Block:
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
            block = Block(self._top, seg, small)
            self._top += seg
            self._grow_reserved(seg)
            self.segments += 1
        remaining = block.size - size
        if remaining >= MIN_BLOCK if small else remaining > SMALL_SIZE:
            rest = Block(block.addr + size, remaining, small)
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
                    raise OutOfMemory

    def _extend(self, size: int, small: bool) -> Block:
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
        block = Block(start, grow, small)
        block.prev = end
        if end is not None:
            end.next = block
        else:
            self.segments += 1
        self._ends[small] = block
        self._grow_reserved(grow)
        return block

    def free(self, block: Block) -> None:
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

    def _remove(self, block: Block) -> None:
        keys = self._keys[block.small]
        del keys[bisect_left(keys, block.size << _SHIFT | block.addr)]
        del self._free[block.addr]
