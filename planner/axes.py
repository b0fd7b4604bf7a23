"""The axes of a workload: what a model family can build and how it names it. The
planner enumerates, validates and describes candidates from them and knows no model
family of its own; each workload registers its axes (backbones, heads, the fidelities
and cycles of its default grid, the names its users pick fidelities by, the global batch
it trains at, the size of its dataset, and how it ranks the quality of a configuration).
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.fidelity import Fidelity
from planner.quality import QualityRanking, rank_equal


@dataclass(frozen=True)
class WorkloadAxes:
    """A workload's axes. The first head is the default one; `fidelities` and `cycles`
    are the default grid; `named_fidelities` and `named_cycles` are what a user may
    select by name (`planner.grid.select_fidelities`); `cycle_label` names a cycle in
    one-line descriptions; `videos_per_epoch` and `dataset` are the dataset a plan is
    sized for when the caller gives none."""

    backbones: tuple[str, ...] = ()
    heads: tuple[str, ...] = ()
    fidelities: tuple[Fidelity, ...] = ()
    cycles: tuple[tuple[Fidelity, ...], ...] = ()
    named_fidelities: tuple[tuple[str, Fidelity], ...] = ()
    named_cycles: tuple[tuple[str, tuple[Fidelity, ...]], ...] = ()
    cycle_label: str = "cycle"
    global_batch: int = 1
    videos_per_epoch: int = 1
    dataset: str = "unspecified"
    quality: QualityRanking = rank_equal

    @property
    def default_head(self) -> str:
        return self.heads[0] if self.heads else ""
