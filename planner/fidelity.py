"""Input fidelity of a training clip: snippets per video (TR), spatial size (SR) and
frames per snippet (F). The paper's named fidelities live here because the planner,
the data pipeline and the trainer all speak of them.

Source: Xu et al., "Low-Fidelity Video Encoder Optimization for Temporal Action
Localization", NeurIPS 2021, Table 1 and supplementary Table B (see PAPER.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fidelity:
    tr: int  # snippets per video (temporal resolution)
    sr: int  # spatial resolution: frames are SR x SR pixels
    frames_per_snippet: int = 8  # F: 64 consecutive frames at stride 8

    def __post_init__(self) -> None:
        if self.tr < 1:
            raise ValueError(f"tr must be >= 1, got {self.tr}")
        if self.sr < 32:
            raise ValueError(f"sr must be >= 32, got {self.sr}")
        if self.frames_per_snippet < 1:
            raise ValueError(f"frames_per_snippet must be >= 1, got {self.frames_per_snippet}")

    @property
    def volume(self) -> int:
        """Input pixels per video and channel: TR x F x SR^2."""
        return self.tr * self.frames_per_snippet * self.sr * self.sr

    def label(self) -> str:
        return f"{self.tr}/{self.sr}"


# The paper's fidelities (PAPER.md, "Fidelity" table).
FULL = Fidelity(100, 224)
S_LOFI = Fidelity(100, 112)
T_LOFI = Fidelity(25, 224)
ST_LOFI = Fidelity(50, 158)
LOW_BUDGET = Fidelity(25, 112)

NAMED_FIDELITIES: dict[str, Fidelity] = {
    "full": FULL,
    "S": S_LOFI,
    "T": T_LOFI,
    "ST": ST_LOFI,
    "low": LOW_BUDGET,
}

# C-LoFi cycles through S -> T -> ST (long cycle: every epoch; short: every 16 batches).
C_LOFI_CYCLE: tuple[Fidelity, ...] = (S_LOFI, T_LOFI, ST_LOFI)
