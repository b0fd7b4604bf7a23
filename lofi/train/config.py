"""The resolved configuration of a training run: frozen dataclasses, saved into the run
folder and every LoFi checkpoint, loaded strictly (unknown keys are errors); the stage
recipes (the paper's, and the synthetic default's for a CPU)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lofi.errors import InputFileError, OptionError
from lofi.plan_axes import LOFI_AXES
from planner.fidelity import Fidelity
from planner.grid import GridSpec
from planner.strict_json import Node, build_dataclass, read_json_document


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and step schedule of one stage: lr x gamma every `step_epochs`."""

    name: str  # "sgd" | "adam"
    lr: float
    epochs: int
    momentum: float = 0.0
    weight_decay: float = 1e-4
    step_epochs: int = 5
    gamma: float = 0.5

    def __post_init__(self) -> None:
        if self.name not in ("sgd", "adam"):
            raise OptionError(f"optimizer must be sgd or adam, got {self.name!r}")
        if not self.lr > 0:
            raise OptionError(f"learning rate must be > 0, got {self.lr}")
        if self.epochs < 0:
            raise OptionError(f"epochs must be >= 0, got {self.epochs}")
        if self.step_epochs < 1:
            raise OptionError(f"lr step must be >= 1 epoch, got {self.step_epochs}")


# LoFi stage (PAPER.md, "LoFi optimisation"): SGD, momentum 0, weight decay 1e-4,
# lr 0.1 halved every 5 epochs. The paper gives no epoch count; 10 is ours.
LOFI_RECIPE = OptimConfig("sgd", lr=0.1, epochs=10, momentum=0.0, weight_decay=1e-4, step_epochs=5, gamma=0.5)
# Head at full fidelity, G-TAD's ActivityNet recipe (PAPER.md, G-TAD): Adam lr 4e-3,
# weight decay 1e-4, 10 epochs, batch 16, lr x0.1 after 5 epochs.
GTAD_HEAD_RECIPE = OptimConfig("adam", lr=4e-3, epochs=10, weight_decay=1e-4, step_epochs=5, gamma=0.1)
# BMN's released recipe (JJBOY/BMN-Boundary-Matching-Network opts.py): Adam lr 1e-3,
# weight decay 1e-4, 9 epochs, batch 16, lr x0.1 after 7 epochs.
BMN_HEAD_RECIPE = OptimConfig("adam", lr=1e-3, epochs=9, weight_decay=1e-4, step_epochs=7, gamma=0.1)
HEAD_RECIPES = {"gtad": GTAD_HEAD_RECIPE, "bmn": BMN_HEAD_RECIPE}


@dataclass(frozen=True)
class DataConfig:
    annotations: str
    media_root: str
    frames: bool = False  # media_root holds frame folders instead of video files
    classification: str | None = None  # video-level class scores for detection fusion
    train_subset: str = "training"
    eval_subset: str = "validation"
    full_fidelity: Fidelity = Fidelity(100, 224)  # feature extraction and head training
    stride: int = 8  # source frames between a snippet's frames (paper: 64 frames -> 8)
    flip: bool = True  # horizontal flips in training (off where a mirrored motion is another class)

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise OptionError(f"stride (--stride) must be >= 1, got {self.stride}")


@dataclass(frozen=True)
class PretrainConfig:
    """Action-classification pre-training of the encoder (the paper's ACP stage, on the
    trimmed instances of the training subset; lofi/train/pretrain_stage.py)."""

    recipe: OptimConfig
    snippets_per_clip: int = 2  # snippets drawn inside an instance, averaged (TSN consensus)
    videos_per_batch: int = 4  # videos decoded per step; their instances form the batch
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("snippets_per_clip", "videos_per_batch"):
            if getattr(self, name) < 1:
                raise OptionError(f"pretrain {name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig
    backbone: str
    head: str
    lofi: OptimConfig = LOFI_RECIPE
    head_stage: OptimConfig = GTAD_HEAD_RECIPE
    head_batch: int = 16
    cycle: str = "long"  # C-LoFi: "long" changes fidelity every epoch, "short" every 16 batches
    short_cycle_batches: int = 16
    pretrained: str | None = None
    pretrain: PretrainConfig | None = None  # set: the pretrain stage makes `pretrained` if absent
    freeze_bn: bool | None = None  # None: frozen for a pre-trained encoder, trained for a random one
    feature_batch: int = 8
    checkpoint_every: int = 50  # optimizer steps between checkpoints (and at each epoch end)
    log_every: int = 10  # optimizer steps between metrics.jsonl records
    num_workers: int = 0
    seed: int = 0
    baseline: bool = False  # skip the LoFi stage: frozen pre-trained encoder (ACP)
    top_k_proposals: int = 100
    top_k_classes: int = 2
    alloc_conf: str | None = None  # PYTORCH_CUDA_ALLOC_CONF the plan trains with (None: PyTorch's default)
    plan_overrides: tuple[str, ...] = ()  # plan fields the user overrode (--override-plan), "field: plan -> used"
    proposal_end: str = "lofi"  # "official": no proposal ends after (T-1)/T (BMN/G-TAD loops)
    bn_mode: str | None = None  # train|frozen|partial; None: from freeze_bn / pretrained (encoder_bn_mode())
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "plan_overrides", tuple(self.plan_overrides))  # a JSON list when loaded
        if self.proposal_end not in ("lofi", "official"):
            raise OptionError(f"proposal_end must be lofi or official, got {self.proposal_end!r}")
        if self.bn_mode not in (None, *BN_MODES):
            raise OptionError(f"bn_mode must be train, frozen or partial, got {self.bn_mode!r}")
        if self.cycle not in ("long", "short"):
            raise OptionError(f"cycle must be long or short, got {self.cycle!r}")
        for name in ("head_batch", "feature_batch", "checkpoint_every", "log_every", "short_cycle_batches"):
            if getattr(self, name) < 1:
                raise OptionError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise OptionError(f"num_workers (--workers) must be >= 0, got {self.num_workers}")


BN_MODES = ("train", "frozen", "partial")  # lofi.models.encoders' BatchNorm modes
PRETRAINED_BN_MODE = "partial"  # TSM partialBN: the LoFi stage's default for pre-trained weights (docs/synthetic.md)


def requested_bn_mode(bn_mode: str | None, freeze_bn: bool | None) -> str | None:
    """The BatchNorm mode the user asked for: --bn-mode, else --freeze-bn/--train-bn,
    else None (the default: `default_bn_mode`)."""
    if bn_mode is not None:
        return bn_mode
    if freeze_bn is not None:
        return "frozen" if freeze_bn else "train"
    return None


def default_bn_mode(pretrained: bool) -> str:
    """PRETRAINED_BN_MODE for a pre-trained encoder (its statistics are good and a video
    batch is tiny), `train` for a random one, which needs batch statistics to learn."""
    return PRETRAINED_BN_MODE if pretrained else "train"


def encoder_bn_mode(config: TrainConfig) -> str:
    """The encoder's BatchNorm mode in the LoFi stage (lofi.models.encoders): `bn_mode`
    if given, else `frozen`/`train` from `freeze_bn`, else PRETRAINED_BN_MODE for a
    pre-trained encoder (its statistics are good and a video batch is tiny) and `train`
    for a random one, which needs batch statistics to learn (docs/synthetic.md)."""
    return requested_bn_mode(config.bn_mode, config.freeze_bn) or default_bn_mode(config.pretrained is not None)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(document: dict[str, Any], source: str = "config") -> TrainConfig:
    """Rebuild a TrainConfig; unknown or missing keys are errors naming the field."""
    return build_dataclass(Node(document, source, error=InputFileError), TrainConfig, _NESTED)


def load_config(path: str | Path) -> TrainConfig:
    return config_from_dict(read_json_document(path, InputFileError, "config file"), str(path))


_NESTED = {"data": DataConfig, "lofi": OptimConfig, "head_stage": OptimConfig, "full_fidelity": Fidelity,
           "pretrain": PretrainConfig, "recipe": OptimConfig}


# --- the synthetic default --------------------------------------------------------------
# What `lofi train --auto` uses when the user gives no data and has no GPU: the synthetic
# dataset (lofi.data.synth), generated once into a cache folder, the action-classification
# pre-training of the encoder (cached too), and a LoFi grid, recipe and time budget sized
# so that a whole first run (data, pre-training, LoFi stage, features, head, evaluation)
# takes about ten minutes on a 2-core CPU. The numbers it reaches are in
# docs/synthetic.md with the command that produced them.

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
    LOFI_AXES,
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
