"""The paper's named fidelities and the C-LoFi cycle: TR snippets per video x SR pixels.

Source: Xu et al., "Low-Fidelity Video Encoder Optimization for Temporal Action
Localization", NeurIPS 2021, Table 1 and supplementary Table B (see PAPER.md,
"Fidelity" table).
"""

from __future__ import annotations

from planner.fidelity import Fidelity

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
CYCLE_NAME = "C"  # `--fidelity C` selects the C-LoFi cycle
