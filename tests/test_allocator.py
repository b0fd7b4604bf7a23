"""The caching-allocator model on hand-made event sequences (rules of
c10/cuda/CUDACachingAllocator.cpp, see planner/cost/allocator.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.cost.allocator import (ALLOC, FREE, LARGE_BUFFER, SMALL_BUFFER, CachingAllocatorModel, round_size, segment_size)
from planner.cost.replay import needed_capacity, replay

KiB, MiB = 1 << 10, 1 << 20


def run(events, **kwargs):
    """events: ("a", id, bytes[, category]) or ("f", id)."""
    ops = [ALLOC if e[0] == "a" else FREE for e in events]
    ids = [e[1] for e in events]
    sizes = [e[2] if e[0] == "a" else 0 for e in events]
    cats = [e[3] if e[0] == "a" and len(e) > 3 else 0 for e in events]
    return replay(ops, ids, sizes, cats, **kwargs)


def test_requests_round_to_512_bytes():
    assert round_size(1) == 512
    assert round_size(512) == 512
    assert round_size(513) == 1024
    assert run([("a", 0, 1)]).allocated_peak == 512


@pytest.mark.parametrize(
    ("request_bytes", "segment"),
    [
        (1, SMALL_BUFFER),
        (MiB, SMALL_BUFFER),  # <= 1 MiB: small pool, 2 MiB segments
        (MiB + 1, LARGE_BUFFER),  # 1-10 MiB: a 20 MiB segment
        (10 * MiB - 512, LARGE_BUFFER),
        (10 * MiB - 1, 10 * MiB),  # rounds up to 10 MiB first
        (10 * MiB, 10 * MiB),  # >= 10 MiB: rounded to 2 MiB
        (11 * MiB, 12 * MiB),
    ],
)
def test_segment_sizes(request_bytes, segment):
    assert segment_size(round_size(request_bytes)) == segment
    assert run([("a", 0, request_bytes)]).reserved_peak == segment


def test_small_requests_share_a_2_mib_segment():
    four = [("a", i, 512 * KiB) for i in range(4)]
    assert run(four).reserved_peak == 2 * MiB
    assert run([*four, ("a", 9, 512 * KiB)]).reserved_peak == 4 * MiB


def test_mid_sized_requests_are_split_from_one_20_mib_segment():
    result = run([("a", 0, 5 * MiB), ("a", 1, 5 * MiB), ("a", 2, 9 * MiB)])
    assert result.reserved_peak == 20 * MiB
    assert result.segments == 1
    assert result.allocated_peak == 20 * MiB  # the last 1 MiB tail is not > 1 MiB: not split off


def test_unsplittable_tail_counts_as_allocated():
    # 11 MiB -> a 12 MiB segment; the 1 MiB tail is not > 1 MiB, so it is not split off.
    assert run([("a", 0, 11 * MiB)]).allocated_peak == 12 * MiB
    # In the small pool a tail of >= 512 bytes is split off.
    assert run([("a", 0, 600 * KiB)]).allocated_peak == 600 * KiB


def test_freed_blocks_are_reused_and_split():
    result = run([("a", 0, 30 * MiB), ("f", 0), ("a", 1, 20 * MiB), ("a", 2, 8 * MiB)])
    assert result.reserved_peak == 30 * MiB  # 20 + 8 MiB both fit in the cached 30 MiB block
    assert result.segments == 1


def test_best_fit_takes_the_smallest_block_that_fits():
    events = [("a", 0, 40 * MiB), ("a", 1, 30 * MiB), ("f", 0), ("f", 1), ("a", 2, 25 * MiB), ("a", 3, 36 * MiB)]
    result = run(events)
    assert result.segments == 2  # 25 MiB went to the 30 MiB block, 36 MiB still fits the 40
    assert result.reserved_peak == 70 * MiB


def test_freed_neighbours_merge():
    events = [("a", 0, 8 * MiB), ("a", 1, 8 * MiB), ("f", 0), ("f", 1), ("a", 2, 19 * MiB)]
    result = run(events)
    assert result.segments == 1  # the two halves merged back into the 20 MiB block
    assert result.reserved_peak == 20 * MiB


def test_small_and_large_pools_do_not_mix():
    events = [("a", 0, 512 * KiB), ("f", 0), ("a", 1, 3 * MiB)]
    result = run(events)
    assert result.reserved_peak == SMALL_BUFFER + LARGE_BUFFER


def test_peak_categories_and_event():
    events = [("a", 0, 10 * MiB, 0), ("a", 1, 20 * MiB, 3), ("f", 1), ("a", 2, 4 * MiB, 1)]
    result = run(events)
    assert result.allocated_peak == 30 * MiB
    assert result.peak_event == 1
    assert result.peak_by_category[0] == 10 * MiB and result.peak_by_category[3] == 20 * MiB


def test_capacity_releases_cached_segments_before_failing():
    events = [("a", 0, 20 * MiB), ("f", 0), ("a", 1, 25 * MiB)]
    unlimited = run(events)
    assert unlimited.reserved_peak == 46 * MiB and not unlimited.oom  # 20 MiB cached + 26 MiB
    tight = run(events, capacity=30 * MiB)
    assert tight.reserved_peak == 26 * MiB and tight.released == 20 * MiB and not tight.oom
    assert run(events, capacity=20 * MiB).oom


def two_steps(step):
    """The events of `step` twice (ids of the second copy shifted), and where the second starts."""
    second = [(e[0], e[1] + 100, *e[2:]) for e in step]
    return [*step, *second], len(step)


def needed(events, last, tolerance=MiB, **kwargs):
    return needed_capacity(lambda capacity: run(events, capacity=capacity, count_from=last, **kwargs),
                           tolerance=tolerance)


def test_needed_capacity_releases_the_cache_once():
    """By hand: 20 MiB (segment 20), freed; 25 MiB (segment 26), freed; 40 MiB. Without
    a limit the allocator keeps all three segments (86 MiB). At 40 MiB it releases the
    cached ones before the 40 MiB segment; the second step then carves everything from
    that segment: 40 MiB is enough and the steady step releases nothing."""
    events, last = two_steps([("a", 0, 20 * MiB), ("f", 0), ("a", 1, 25 * MiB), ("f", 1), ("a", 2, 40 * MiB), ("f", 2)])
    capacity, at, free = needed(events, last)
    assert free.allocated_peak == 40 * MiB and free.reserved_peak == 86 * MiB and free.retries == 0
    assert 40 * MiB <= capacity <= 41 * MiB
    assert not at.oom and at.retries == 2 and at.retries_late == 0
    assert run(events, capacity=39 * MiB).oom


def test_needed_capacity_of_a_step_that_releases_every_time():
    """By hand: 16 MiB and 20 MiB live, the 16 freed, then 26 MiB next to the 20.
    Step 1 at 52 MiB: segments 16 + 20; the 26 MiB segment needs the free 16 released
    (20 + 26 = 46). Step 2: the 16 is carved from the cached 20, the 20 from the cached
    26 (6 left), the 16 freed; 26 MiB fits no free block, so the now entirely free 20 MiB
    segment is released again: 26 + 26 = 52 MiB. Below 52 the second step runs out."""
    events, last = two_steps([("a", 0, 16 * MiB), ("a", 1, 20 * MiB), ("f", 0), ("a", 2, 26 * MiB), ("f", 1), ("f", 2)])
    capacity, at, free = needed(events, last)
    assert free.allocated_peak == 46 * MiB and free.reserved_peak == 62 * MiB
    assert 52 * MiB <= capacity <= 53 * MiB
    assert at.retries == 2 and at.retries_late == 1  # one release in step 1, one in every later step
    assert run(events, capacity=51 * MiB).oom and not run(events, capacity=52 * MiB).oom


def test_needed_capacity_bisects_within_the_tolerance():
    events, last = two_steps([("a", 0, 16 * MiB), ("a", 1, 20 * MiB), ("f", 0), ("a", 2, 26 * MiB), ("f", 1), ("f", 2)])
    capacity, at, _ = needed(events, last, tolerance=32 * MiB)
    assert 52 * MiB <= capacity <= 52 * MiB + 32 * MiB and not at.oom


def test_a_stream_whose_verdict_is_decided_anyway_is_bisected_coarsely():
    """Allocated 46 MiB and reserved 62 MiB: with the fit decided between 40 and 44 MiB
    (nothing fits there) or 70 and 80 MiB (it fits anyway) 1 % of the peak is enough."""
    events, last = two_steps([("a", 0, 16 * MiB), ("a", 1, 20 * MiB), ("f", 0), ("a", 2, 26 * MiB), ("f", 1), ("f", 2)])
    probes = []

    def run_at(capacity):
        probes.append(capacity)
        return run(events, capacity=capacity, count_from=last)

    fine, _, _ = needed_capacity(run_at, tolerance=64 * 1024, verdict=(50 * MiB, 54 * MiB))
    fine_probes, probes[:] = len(probes), []
    for verdict in ((40 * MiB, 44 * MiB), (70 * MiB, 80 * MiB)):
        coarse, _, _ = needed_capacity(run_at, tolerance=64 * 1024, verdict=verdict)
        assert 52 * MiB <= fine <= coarse <= 52 * MiB + 46 * MiB // 100 + 1
        assert len(probes) < fine_probes
        probes[:] = []


def test_expandable_segments_grow_in_place():
    """By hand: 30 MiB maps two 20 MiB pages (10 MiB free at the end), freed; 50 MiB
    extends that free end by one page: 60 MiB in one segment, where the default
    allocator keeps a 30 and a 50 MiB segment (80 MiB). 60 MiB is also what it needs."""
    events = [("a", 0, 30 * MiB), ("f", 0), ("a", 1, 50 * MiB)]
    default, expandable = run(events), run(events, expandable=True)
    assert default.reserved_peak == 80 * MiB and default.segments == 2
    assert expandable.reserved_peak == 60 * MiB and expandable.segments == 1
    assert expandable.allocated_peak == 50 * MiB
    capacity, at, _ = needed(events, len(events), expandable=True)
    assert 60 * MiB <= capacity <= 61 * MiB and not at.oom
    assert run(events, capacity=59 * MiB, expandable=True).oom


def test_expandable_segments_release_unmaps_free_blocks():
    """By hand: 30 MiB maps two pages (30 + 10 free), 4 MiB comes from the free end
    (30 + 4 + 6 free), the 30 is freed; 40 MiB fits no free block, so the free 6 MiB end
    grows by two pages: 80 MiB mapped without a limit. At 50 MiB the free 30 MiB block is
    unmapped first: 4 + 6 + 40 = 50 mapped, which fits; at 49 nothing helps."""
    events = [("a", 0, 30 * MiB), ("a", 1, 4 * MiB), ("f", 0), ("a", 2, 40 * MiB)]
    unlimited = run(events, expandable=True)
    assert unlimited.reserved_peak == 80 * MiB and unlimited.retries == 0
    squeezed = run(events, capacity=50 * MiB, expandable=True)
    assert squeezed.released == 30 * MiB and squeezed.retries == 1 and not squeezed.oom
    assert squeezed.reserved_peak == 50 * MiB
    assert run(events, capacity=49 * MiB, expandable=True).oom


def test_malformed_streams_are_rejected():
    with pytest.raises(ValueError, match="free of unknown block"):
        run([("a", 0, 10), ("f", 0), ("f", 0)])
    with pytest.raises(ValueError, match="allocation of live block"):
        run([("a", 0, 10), ("a", 0, 10)])


def test_plain_allocator_is_exact():
    result = run([("a", 0, 100), ("a", 1, 300), ("f", 0), ("a", 2, 50)], kind="plain")
    assert result.allocated_peak == result.reserved_peak == 400


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 48 * MiB)), min_size=1, max_size=60))
def test_invariants_on_random_streams(steps):
    model, live, requested = CachingAllocatorModel(), {}, 0
    for index, (free, nbytes) in enumerate(steps):
        if free and live:
            block, size = live.pop(min(live))
            model.free(block)
            requested -= size
        else:
            live[index] = (model.malloc(nbytes), nbytes)
            requested += nbytes
        assert model.allocated == sum(b.size for b, _ in live.values())
        assert requested <= model.allocated <= model.reserved
        assert model.allocated - requested <= len(live) * 2 * MiB  # rounding + unsplit tails
