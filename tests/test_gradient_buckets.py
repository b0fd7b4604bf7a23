"""The planner's data-parallel term is the largest flat bucket the trainer's gradient
averaging allocates (lofi.train.distributed.average_gradients)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lofi.models.lofi_model import build_lofi_model
from lofi.train.distributed import gradient_buckets
from planner.cost.overheads import largest_bucket

CAP = 25 * 2**20


def _largest(sizes: list[int], cap: int) -> int:
    return max((sum(sizes[i] for i in bucket) for bucket in gradient_buckets(sizes, cap)), default=0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=3000), max_size=40), st.integers(min_value=1, max_value=5000))
def test_the_planner_packs_buckets_as_the_trainer_does(sizes, cap):
    assert largest_bucket(tuple(sizes), cap) == _largest(sizes, cap)
    for bucket in gradient_buckets(sizes, cap):  # every bucket within the cap, or one oversized gradient
        assert len(bucket) == 1 or sum(sizes[i] for i in bucket) <= cap


def test_the_largest_bucket_of_a_real_model():
    model = build_lofi_model("tsm_r50", "gtad", [16], freeze_bn=True, checkpointing="none", device="meta")
    sizes = [p.numel() * p.element_size() for p in model.parameters() if p.requires_grad]
    largest = largest_bucket(tuple(sizes), CAP)
    assert largest == _largest(sizes, CAP)
    assert max(sizes) <= largest <= max(CAP, max(sizes))  # one bucket, never a copy of every gradient
