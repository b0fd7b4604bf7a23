"""The LoFi workload's axes (`planner.axes.WorkloadAxes`): what `lofi plan` enumerates
by default and may be asked for.

Default grid (planner issue, "Candidates"): the paper's fidelities (full 100/224, S
100/112, T 25/224, ST 50/158, low budget 25/112, and the C-LoFi cycle S -> T -> ST) x
tsm_r18/r34/r50 x G-TAD (or BMN), at the paper's global batch of 16 (PAPER.md, "LoFi
optimisation"), sized for the 9649 training videos of ActivityNet-1.3
(shared/data/README.md) and ranked by the paper's evidence (`lofi.paper_quality`).
"""

from __future__ import annotations

from lofi.fidelities import C_LOFI_CYCLE, CYCLE_NAME, NAMED_FIDELITIES
from lofi.paper_quality import rank_by_paper
from planner.axes import WorkloadAxes
from planner.candidate import Candidate
from planner.choose import describe as describe_candidate

BACKBONES: tuple[str, ...] = ("tsm_r18", "tsm_r34", "tsm_r50")
HEADS: tuple[str, ...] = ("gtad", "bmn")  # the first is the default
PAPER_GLOBAL_BATCH = 16  # PAPER.md: "global batch 16 for every configuration"
ACTIVITYNET_TRAINING_VIDEOS = 9649  # ActivityNet-1.3 training videos (shared/data/README.md)
ACTIVITYNET_DATASET = "ActivityNet-1.3 training"

LOFI_AXES = WorkloadAxes(
    backbones=BACKBONES,
    heads=HEADS,
    fidelities=tuple(NAMED_FIDELITIES.values()),  # full, S, T, ST, low
    cycles=(C_LOFI_CYCLE,),
    named_fidelities=tuple(NAMED_FIDELITIES.items()),
    named_cycles=((CYCLE_NAME, C_LOFI_CYCLE),),
    cycle_label="C-LoFi",
    global_batch=PAPER_GLOBAL_BATCH,
    videos_per_epoch=ACTIVITYNET_TRAINING_VIDEOS,
    dataset=ACTIVITYNET_DATASET,
    quality=rank_by_paper,
)


def describe(candidate: Candidate) -> str:
    """One line for a LoFi candidate ('C-LoFi 100/112+25/224+50/158 tsm_r18, batch 4x4, ...')."""
    return describe_candidate(candidate, LOFI_AXES.cycle_label)
