"""Batches of (video index, fidelity) pairs for the LoFi stage.

Each rank takes its share of a seeded permutation (torch's DistributedSampler, so the
shards match what DDP users expect), cut into batches. The fidelity of each batch
follows the C-LoFi schedule (PAPER.md): the long cycle changes fidelity every epoch,
the short cycle every `short_every` batches; a single fidelity never changes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch.utils.data import DistributedSampler

from planner.fidelity import Fidelity


def fidelity_for_batch(
    fidelities: Sequence[Fidelity], epoch: int, batch_index: int, cycle: str, short_every: int
) -> Fidelity:
    """The fidelity of batch `batch_index` (0-based, within the epoch) of `epoch`."""
    if len(fidelities) == 1:
        return fidelities[0]
    if cycle == "long":
        return fidelities[epoch % len(fidelities)]
    if cycle == "short":
        return fidelities[(batch_index // short_every) % len(fidelities)]
    raise ValueError(f"cycle must be long or short, got {cycle!r}")


class FidelityBatchSampler:
    """Yields lists of `(index, fidelity)`; `set_epoch` reshuffles, `skip` resumes
    part-way through an epoch (the number of batches already done)."""

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        fidelities: Sequence[Fidelity],
        *,
        cycle: str = "long",
        short_every: int = 16,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if dataset_size < 1:
            raise ValueError("no training videos")
        self.batch_size = batch_size
        self.fidelities = tuple(fidelities)
        self.cycle = cycle
        self.short_every = short_every
        self.drop_last = drop_last
        self._indices = DistributedSampler(
            range(dataset_size), num_replicas=world_size, rank=rank, shuffle=True, seed=seed
        )
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = epoch
        self.skip = skip
        self._indices.set_epoch(epoch)

    def __len__(self) -> int:
        count = len(self._indices)
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, Fidelity]]]:
        indices = list(self._indices)
        for batch_index in range(len(self)):
            chunk = indices[batch_index * self.batch_size : (batch_index + 1) * self.batch_size]
            if batch_index < self.skip:
                continue
            fidelity = fidelity_for_batch(
                self.fidelities, self.epoch, batch_index, self.cycle, self.short_every
            )
            yield [(index, fidelity) for index in chunk]
