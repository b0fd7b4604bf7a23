"""The LoFi stage's batch sampler: C-LoFi schedules, sharding across ranks, resuming."""

from __future__ import annotations

from lofi.fidelities import S_LOFI, ST_LOFI, T_LOFI
from lofi.train.loop import FidelityBatchSampler, fidelity_for_batch

CYCLE = (S_LOFI, T_LOFI, ST_LOFI)


def test_long_cycle_changes_every_epoch_short_every_n_batches():
    assert [fidelity_for_batch(CYCLE, e, 0, "long", 16) for e in range(4)] == [S_LOFI, T_LOFI, ST_LOFI, S_LOFI]
    assert fidelity_for_batch(CYCLE, 0, 15, "short", 16) == S_LOFI
    assert fidelity_for_batch(CYCLE, 0, 16, "short", 16) == T_LOFI
    assert fidelity_for_batch(CYCLE, 3, 47, "short", 16) == ST_LOFI
    assert fidelity_for_batch(CYCLE, 1, 48, "short", 16) == S_LOFI


def test_batches_share_one_fidelity_and_cover_the_shard():
    sampler = FidelityBatchSampler(10, 3, CYCLE, cycle="short", short_every=2)
    sampler.set_epoch(0)
    batches = list(sampler)
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert sorted(i for b in batches for i, _ in b) == list(range(10))
    assert [b[0][1] for b in batches] == [S_LOFI, S_LOFI, T_LOFI, T_LOFI]
    assert all(len({f for _, f in b}) == 1 for b in batches)


def test_ranks_get_disjoint_shards_and_epochs_reshuffle():
    shards = []
    for rank in range(2):
        sampler = FidelityBatchSampler(8, 2, (T_LOFI,), rank=rank, world_size=2, seed=3)
        sampler.set_epoch(0)
        shards.append([i for b in sampler for i, _ in b])
    assert set(shards[0]).isdisjoint(shards[1]) and len(shards[0]) == len(shards[1]) == 4
    sampler = FidelityBatchSampler(8, 2, (T_LOFI,), seed=3)
    sampler.set_epoch(0)
    first = [i for b in sampler for i, _ in b]
    sampler.set_epoch(1)
    assert first != [i for b in sampler for i, _ in b]


def test_skip_resumes_where_the_epoch_stopped():
    sampler = FidelityBatchSampler(9, 2, CYCLE, cycle="short", short_every=1, seed=1)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.set_epoch(2, skip=3)
    assert list(sampler) == whole[3:]
