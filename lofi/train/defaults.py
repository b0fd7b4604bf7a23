"""What `lofi train --auto` uses when the user gives no data and has no GPU: the
synthetic dataset (lofi.data.synth), generated once into a cache folder, and a LoFi
grid, recipe and time budget sized so that a whole run (LoFi stage, features, head,
evaluation) finishes in about ten minutes on a 2-core CPU. The numbers it reaches are
in docs/synthetic.md with the command that produced them."""

from __future__ import annotations

import os
from pathlib import Path

from lofi.train.config import OptimConfig
from planner.fidelity import Fidelity
from planner.grid import GridSpec

# The synthetic dataset's "full fidelity" (the role of 100 snippets x 224 px on
# ActivityNet): 16 snippets of 4 frames at its native 64 px. Snippet frames are taken
# every 8 source frames (1 s at 8 fps), the spacing the dataset's motions are made for.
SYNTH_FULL_FIDELITY = Fidelity(16, 64, 4)
SYNTH_STRIDE = 8

# Low-fidelity candidates on the CPU, mirroring the paper's S / T / ST reductions of the
# full fidelity above (TR x SR^2 about constant), plus the C-LoFi cycle over them.
CPU_S = Fidelity(16, 32, 4)
CPU_T = Fidelity(4, 64, 4)
CPU_ST = Fidelity(8, 46, 4)
CPU_GRID = GridSpec(
    fidelities=(CPU_S, CPU_T, CPU_ST),
    cycles=((CPU_S, CPU_T, CPU_ST),),
    backbones=("tsm_r18",),
    batches=(1, 2, 4),
    precisions=("fp32",),
    checkpointing=("none",),
    global_batch=4,
)
CPU_EPOCH_BUDGET_SECONDS = 60.0  # per LoFi epoch on the synthetic training set

# Recipes for the synthetic default (the paper's are for ActivityNet-scale data and a
# Kinetics-pre-trained encoder; see docs/synthetic.md for why these differ).
CPU_LOFI_RECIPE = OptimConfig("sgd", lr=0.1, epochs=6, momentum=0.0, weight_decay=1e-4, step_epochs=4, gamma=0.5)
CPU_HEAD_RECIPE = OptimConfig("adam", lr=4e-3, epochs=10, weight_decay=1e-4, step_epochs=7, gamma=0.1)
CPU_HEAD_BATCH = 4


def cache_dir() -> Path:
    """$LOFI_CACHE, else ~/.cache/lofi (the synthetic data and the planner's traces)."""
    return Path(os.environ.get("LOFI_CACHE") or Path.home() / ".cache" / "lofi")
