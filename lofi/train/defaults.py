"""What `lofi train --auto` uses when the user gives no data and has no GPU: the
synthetic dataset (lofi.data.synth), generated once into a cache folder, the
action-classification pre-training of the encoder (cached too), and a LoFi grid, recipe
and time budget sized so that a whole first run (data, pre-training, LoFi stage,
features, head, evaluation) takes about ten minutes on a 2-core CPU. The numbers it
reaches are in docs/synthetic.md with the command that produced them."""

from __future__ import annotations

from lofi.train.config import OptimConfig, PretrainConfig
from planner.fidelity import Fidelity
from planner.grid import GridSpec

# The synthetic dataset's "full fidelity" (the role of 100 snippets x 224 px on
# ActivityNet): 16 snippets of 4 frames at its native 64 px. Snippet frames are taken
# every 8 source frames (1 s at 8 fps), the spacing the dataset's motions are made for.
SYNTH_FULL_FIDELITY = Fidelity(16, 64, 4)
SYNTH_STRIDE = 8

# Low-fidelity candidates on the CPU: the S-LoFi reduction of the full fidelity above
# (spatial size halved, all 16 snippets), the configuration whose result against the
# baseline docs/synthetic.md reports; the planner picks the batch size and checks the
# memory and the time budget.
CPU_S = Fidelity(16, 32, 4)
CPU_GRID = GridSpec(
    fidelities=(CPU_S,),
    cycles=(),
    backbones=("tsm_r18",),
    batches=(1, 2, 4),
    precisions=("fp32",),
    checkpointing=("none",),
    global_batch=4,
    optimizer="adam",
)
CPU_EPOCH_BUDGET_SECONDS = 90.0  # per LoFi epoch over the 90 synthetic training videos

# Action-classification pre-training on the synthetic training instances (the role of
# Kinetics-400 for ActivityNet, PAPER.md stage 1): full fidelity, BatchNorm trained,
# two snippets an instance. Cached under the cache root (lofi/train/pretrain_stage.py).
# No stage flips the synthetic videos (SYNTH_FLIP): a mirrored motion is another class
# or a look-alike (slide_right mirrored is the look-alike of slide_right).
SYNTH_PRETRAIN = PretrainConfig(
    OptimConfig("adam", lr=1e-3, epochs=6, weight_decay=1e-4, step_epochs=4, gamma=0.1),
    snippets_per_clip=2, videos_per_batch=4, seed=0,
)
SYNTH_FLIP = False

# Recipes for the synthetic default. The paper's (SGD, lr 0.1, momentum 0) fine-tunes a
# Kinetics-pre-trained encoder; on this data Adam learns in minutes and SGD did not from
# random weights (docs/synthetic.md); the same recipe fine-tunes the pre-trained one.
CPU_LOFI_RECIPE = OptimConfig("adam", lr=1e-3, epochs=10, weight_decay=1e-4, step_epochs=7, gamma=0.5)
CPU_HEAD_RECIPE = OptimConfig("adam", lr=4e-3, epochs=10, weight_decay=1e-4, step_epochs=5, gamma=0.1)
CPU_HEAD_BATCH = 4
