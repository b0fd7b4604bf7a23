"""Input fidelity of a training clip: snippets per video (TR), spatial size (SR) and
frames per snippet (F). Named fidelities belong to the workload that trains at them
(its axes, `planner.axes`).
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

