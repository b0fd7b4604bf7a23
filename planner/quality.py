"""Quality of a training configuration (backbone + fidelity or cycle): which one is
expected to give the better model, so the planner can pick the best configuration that
fits. The planner knows no model family: the workload's axes (`planner.axes`) bring the
ranking; without one every configuration is of equal quality and speed decides.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from planner.candidate import Candidate
from planner.fidelity import Fidelity

ConfigKey = tuple[str, tuple[Fidelity, ...], bool]  # (backbone, fidelities, is_cycle)


class Quality(Protocol):
    """Where a configuration ranks; `tier` 0 is the best of the configurations ranked
    together. Candidates that differ only in batch, precision, checkpointing or
    accumulation share their configuration's quality."""

    @property
    def tier(self) -> int: ...

    @property
    def reported_score(self) -> float | None:
        """A published result for exactly this configuration (plan.json keeps it), if any."""
        ...

    def summary(self) -> str:
        """One line: what the rank rests on."""
        ...

    def why_below(self, best: Quality) -> str:
        """The reason this configuration ranks below `best`, for a rejected candidate."""
        ...


QualityRanking = Callable[[Iterable[Candidate]], Mapping[ConfigKey, Quality]]


@dataclass(frozen=True)
class EqualQuality:
    """The quality of every configuration when the workload ranks none."""

    tier: int = 0
    reported_score: float | None = None

    def summary(self) -> str:
        return "not ranked: the workload gives no quality order"

    def why_below(self, best: Quality) -> str:
        return "lower quality"


def config_key(candidate: Candidate) -> ConfigKey:
    return (candidate.backbone, candidate.fidelities, candidate.cycle is not None)


def rank_equal(candidates: Iterable[Candidate]) -> dict[ConfigKey, Quality]:
    """Every configuration among `candidates` in one tier (the planner's neutral ranking)."""
    return {config_key(c): EqualQuality() for c in candidates}
