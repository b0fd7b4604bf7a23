"""Video encoders: a batch of snippets (B, TR, F, 3, SR, SR) -> snippet features (B, C, TR).

LoFi (PAPER.md) embeds every snippet of F frames with a TSM ResNet and averages the F
frame features into one snippet feature; R(2+1)D-18 embeds the snippet as one clip.
Every encoder here shares:

- input: uint8 (B, TR, F, 3, SR, SR) is divided by 255; floating input is taken as
  already scaled to [0, 1] (not checked: that would need the tensor's values). Both are
  then normalised with the mean/std of the backbone's pre-training inside the model, in
  the model's parameter dtype. Any TR >= 1, F >= 1, SR >= 32.
- output: (B, C, TR), C = `out_channels`; the classifier (fc) is dropped.
- BatchNorm mode (`bn_mode`, set at build time through `freeze_bn` or later with
  `set_bn_mode`), kept through every `train()` call:
  `train`: every BN normalises with batch statistics and updates its running ones; all
  affine parameters train (training from random init, and action-classification
  pre-training). `frozen` (`freeze_bn=True`, the default): every BN stays in eval mode
  (running statistics used, never updated) while its affine weight and bias still train.
  `partial`: official TSM `partialBN` (mit-han-lab/temporal-shift-module `ops/models.py`,
  `TSN.train`): the first BN layer in module order (TSM-ResNet's `bn1`, R(2+1)D's stem BN)
  stays in train mode with trainable affine parameters; every other BN is in eval mode
  AND its weight and bias have `requires_grad=False`, so optimizers built from
  trainable parameters skip them.
- gradient checkpointing through `set_grad_checkpointing(policy)`, policies `none`,
  `blocks:N`, `block`, `chunk:K`, and activation offload `offload` (see
  `encoder_checkpointing`; `blocks:N` checkpoints the first N residual blocks of
  `checkpoint_order` below, named by `checkpointed_blocks`; a `+head` suffix is the
  head's, `lofi.models.lofi_model`, and ignored here). `offload` gives the same outputs
  and gradients as `none` in every BN mode. With frozen BN the checkpointing policies
  give the same outputs, gradients and (unchanged) running statistics. With BN in train
  mode, `block` and `blocks:N` are still equivalent (recomputation never updates running
  statistics twice);
  `chunk:K` computes batch statistics over each chunk of K snippets separately ("ghost
  batches": running statistics get one update per chunk), so it is *not* equivalent.

Build with `build_encoder(name, ...)`; the names are the keys of `ENCODERS`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import lru_cache

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models.resnet import ResNet
from torchvision.models.video import r2plus1d_18

from lofi.errors import OptionError
from lofi.models.encoder_checkpointing import parse_policy, run_segment, save_on_cpu
from lofi.models.temporal_shift import ShiftBasicBlock, ShiftBottleneck
from planner.tracing.block_costs import BlockCost, measure as measure_blocks
from planner.tracing.block_costs import checkpoint_order as order_blocks

# ImageNet statistics of torchvision's ResNet weights, also used by TSM (ops/models.py).
BN_MODES = ("train", "frozen", "partial")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Kinetics-400 statistics of torchvision's video models (references/video_classification).
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


class VideoEncoder(nn.Module):
    """Shared input handling, frozen BN and checkpointing; a subclass implements
    `snippet_features` ((N, F, 3, H, W) normalised float -> (N, C)), has its residual
    blocks in `layer1` .. `layer4` and calls `self.run_block` for each, in order."""

    LAYERS = ("layer1", "layer2", "layer3", "layer4")

    def __init__(
        self,
        name: str,
        out_channels: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        freeze_bn: bool = True,
    ) -> None:
        super().__init__()
        self.name = name
        self.out_channels = out_channels
        self.bn_mode = "frozen" if freeze_bn else "train"
        # Not persistent: state dicts hold exactly the torchvision weights.
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1), persistent=False)
        self._policy = "none"
        self._chunk: int | None = None
        self._segments: frozenset[int] = frozenset()  # positions of the blocks run as checkpoint segments
        # Optional stand-in for the chunk loop under `chunk:K`: snippets (B*TR, F, 3, H, W)
        # -> features (B*TR, C). The planner sets one that traces a few chunks and
        # synthesizes the rest (lofi/plan_workload.py); training never does.
        self.chunk_runner: Callable[[Tensor], Tensor] | None = None
        # The context each residual block runs in under `offload`; the planner sets one
        # that records what would go to the host instead of copying (lofi/plan_workload.py).
        self.offload_context: Callable[[], AbstractContextManager] = save_on_cpu
        self._offload = False
        self.pretrained_report = None  # a PretrainedReport once build_encoder loaded weights

    # -- checkpointing (timm style: a switch that forward reads) ------------------------

    @property
    def grad_checkpointing(self) -> str:
        """The current policy string: 'none', 'blocks:N', 'block', 'chunk:K', 'offload' (+head)."""
        return self._policy

    def set_grad_checkpointing(self, policy: str = "block") -> None:
        parsed = parse_policy(policy)
        count = len(self.block_names())
        if parsed.kind == "blocks" and parsed.size > count:  # type: ignore[operator]
            raise OptionError(f"checkpointing policy {policy}: {self.name} has {count} residual blocks, "
                              f"so N must be 1 to {count}, got {parsed.size}")
        if parsed.kind == "blocks":
            segments = frozenset(checkpoint_order(self.name)[: parsed.size])
        else:
            segments = frozenset(range(count)) if parsed.kind == "block" else frozenset()
        self._policy = policy
        self._chunk = parsed.size if parsed.kind == "chunk" else None
        self._offload = parsed.offload
        self._segments = segments

    def block_names(self) -> tuple[str, ...]:
        """Every residual block's module name ('layer1.0', ...), in forward order."""
        return tuple(f"{layer}.{i}" for layer in self.LAYERS for i in range(len(getattr(self, layer))))

    @property
    def checkpointed_blocks(self) -> tuple[str, ...]:
        """The names of the blocks run as checkpoint segments, in forward order."""
        names = self.block_names()
        return tuple(names[i] for i in sorted(self._segments))

    def residual_blocks(self) -> list[nn.Module]:
        """The residual blocks in forward order (`block_names` names them)."""
        return [block for layer in self.LAYERS for block in getattr(self, layer)]

    def run_block(self, index: int, block: nn.Module, x: Tensor, *args: object) -> Tensor:
        """Residual block number `index` (forward order), a checkpoint segment of its own
        when the policy checkpoints it ('block': all; 'blocks:N': N of them), its saved
        tensors offloaded to the host under 'offload'."""
        if index in self._segments:
            return run_segment(block, block, x, *args)
        if self._offload and torch.is_grad_enabled():
            with self.offload_context():
                return block(x, *args)
        return block(x, *args)

    # -- BatchNorm modes ----------------------------------------------------------------

    @property
    def freeze_bn(self) -> bool:
        """True unless every BN trains its statistics (`bn_mode == "train"`)."""
        return self.bn_mode != "train"

    def batchnorms(self) -> list[_BatchNorm]:
        """The BN layers in module order; the first is the stem's (TSM's `partialBN` count)."""
        return [m for m in self.modules() if isinstance(m, _BatchNorm)]

    def set_bn_mode(self, mode: str) -> VideoEncoder:
        """`train`, `frozen` or `partial` (see the module docstring); applies at once and
        on every later `train()`."""
        if mode not in BN_MODES:
            raise OptionError(f"unknown BatchNorm mode {mode!r}; choose one of {', '.join(BN_MODES)}")
        self.bn_mode = mode
        for index, module in enumerate(self.batchnorms()):
            trainable = mode != "partial" or index == 0
            for parameter in (module.weight, module.bias):
                if parameter is not None:
                    parameter.requires_grad_(trainable)
        return self.train(self.training)

    def train(self, mode: bool = True) -> VideoEncoder:
        super().train(mode)
        if self.bn_mode == "train":
            return self
        for index, module in enumerate(self.batchnorms()):
            if self.bn_mode == "frozen" or index > 0:
                module.eval()
        return self

    # -- forward ------------------------------------------------------------------------

    def normalise(self, snippets: Tensor) -> Tensor:
        """uint8 or [0, 1] float (..., 3, H, W) -> (x / range - mean) / std in the
        parameter dtype, written as one fused x * scale + shift: a uint8 input is
        promoted inside the kernel, so no full-size float copy of the clips is made."""
        value_range = 1.0 if snippets.is_floating_point() else 255.0
        x = snippets.to(self.mean.dtype) if snippets.is_floating_point() else snippets
        return torch.addcmul(-self.mean / self.std, x, 1.0 / (value_range * self.std))

    def snippet_features(self, snippets: Tensor) -> Tensor:
        """Normalised (N, F, 3, H, W) -> (N, C); implemented by each backbone."""
        raise NotImplementedError

    def _encode(self, snippets: Tensor) -> Tensor:
        return self.snippet_features(self.normalise(snippets))  # (N, C)

    def forward(self, clips: Tensor) -> Tensor:
        """clips: (B, TR, F, 3, SR, SR) uint8 or float -> (B, C, TR)."""
        if clips.dim() != 6 or clips.shape[3] != 3:
            raise ValueError(f"{self.name} expects clips of shape (B, TR, F, 3, SR, SR), got {tuple(clips.shape)}")
        b, tr = clips.shape[:2]
        snippets = clips.flatten(0, 1)  # (B*TR, F, 3, SR, SR)
        if self._chunk is None:
            feats = self._encode(snippets)
        elif self.chunk_runner is not None:
            feats = self.chunk_runner(snippets)  # (B*TR, C)
        else:
            parts = [run_segment(self._encode, self, chunk) for chunk in snippets.split(self._chunk)]
            feats = torch.cat(parts)  # (B*TR, C)
        return feats.view(b, tr, self.out_channels).transpose(1, 2).contiguous()  # (B, C, TR)


class TSMResNet(VideoEncoder):
    """TSM ResNet (residual shift in every block) on torchvision's ResNet definition.

    Each frame goes through the 2D ResNet; the blocks shift channels across the F frames
    of its snippet; the globally average-pooled frame features are averaged over F."""

    def __init__(self, name: str, block: type, layers: tuple[int, int, int, int], *, freeze_bn: bool = True):
        super().__init__(name, 512 * block.expansion, IMAGENET_MEAN, IMAGENET_STD, freeze_bn=freeze_bn)
        trunk = ResNet(block, list(layers))  # torchvision's definition, random init
        self.conv1, self.bn1, self.relu, self.maxpool = trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4
        self.train()

    def snippet_features(self, snippets: Tensor) -> Tensor:
        n, f = snippets.shape[:2]
        x = snippets.flatten(0, 1)  # (N*F, 3, H, W), frames of a snippet adjacent
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # stem, never checkpointed
        for index, block in enumerate(self.residual_blocks()):
            x = self.run_block(index, block, x, f)
        x = x.mean(dim=(2, 3))  # (N*F, C) global average pool
        return x.view(n, f, self.out_channels).mean(dim=1)  # (N, C) mean over frames


class R2Plus1D(VideoEncoder):
    """torchvision's R(2+1)D-18 (Tran et al., CVPR 2018): each snippet is one clip
    (3, F, H, W); the feature is the global (time and space) average pool of layer4."""

    def __init__(self, name: str = "r2plus1d_18", *, freeze_bn: bool = True):
        super().__init__(name, 512, KINETICS_MEAN, KINETICS_STD, freeze_bn=freeze_bn)
        trunk = r2plus1d_18(weights=None)
        self.stem = trunk.stem
        self.layer1, self.layer2, self.layer3, self.layer4 = trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4
        self.train()

    def snippet_features(self, snippets: Tensor) -> Tensor:
        x = self.stem(snippets.transpose(1, 2))  # (N, 3, F, H, W) -> (N, 64, F, H/2, W/2)
        for index, block in enumerate(self.residual_blocks()):
            x = self.run_block(index, block, x)
        return x.mean(dim=(2, 3, 4))  # (N, 512)


ENCODERS: dict[str, Callable[..., VideoEncoder]] = {
    "tsm_r18": lambda freeze_bn: TSMResNet("tsm_r18", ShiftBasicBlock, (2, 2, 2, 2), freeze_bn=freeze_bn),
    "tsm_r34": lambda freeze_bn: TSMResNet("tsm_r34", ShiftBasicBlock, (3, 4, 6, 3), freeze_bn=freeze_bn),
    "tsm_r50": lambda freeze_bn: TSMResNet("tsm_r50", ShiftBottleneck, (3, 4, 6, 3), freeze_bn=freeze_bn),
    "r2plus1d_18": lambda freeze_bn: R2Plus1D("r2plus1d_18", freeze_bn=freeze_bn),
}


# Which residual blocks `blocks:N` checkpoints: the N that save the most activation
# memory per recomputed FLOP, measured by `planner.tracing.block_costs` on one forward of the
# encoder on the meta device at a canonical input (one snippet of 8 frames at 224 x 224,
# float32, BatchNorm frozen). The order is a function of the architecture alone, so
# `lofi train` and the planner's trace (both set the policy through
# `set_grad_checkpointing`) checkpoint the same blocks at every fidelity. Within a
# ResNet stage, saved bytes and FLOPs both scale with frames x height x width, so the
# order would not change with the input size except through rounding. Measured, it is
# the forward order for every encoder here (earlier stages have fewer channels: more
# bytes per FLOP); ties (blocks of the same shape) go to the earlier block.
ORDER_FRAMES, ORDER_SIDE = 8, 224


@lru_cache(maxsize=None)
def block_costs(name: str) -> tuple[BlockCost, ...]:
    """The cost of checkpointing each residual block of encoder `name` (ENCODERS key)."""
    encoder = build_encoder(name, device="meta")
    snippets = torch.empty(1, ORDER_FRAMES, 3, ORDER_SIDE, ORDER_SIDE, device="meta")  # (N, F, 3, H, W)
    return measure_blocks(lambda: encoder.snippet_features(snippets), encoder.residual_blocks(),
                          [*encoder.parameters(), *encoder.buffers()])


@lru_cache(maxsize=None)
def checkpoint_order(name: str) -> tuple[int, ...]:
    """Block positions of encoder `name`; `blocks:N` checkpoints the first N."""
    return order_blocks(block_costs(name))


def build_encoder(
    name: str,
    *,
    pretrained: str | os.PathLike | None = None,
    freeze_bn: bool = True,
    bn_mode: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> VideoEncoder:
    """Build encoder `name` (a key of ENCODERS) with random init, or with the weights of a
    local checkpoint `pretrained` (torchvision or TSM layout, see `lofi.models.pretrained`;
    the load report is kept as `encoder.pretrained_report`). BatchNorm: `bn_mode`
    (`train|frozen|partial`) when given, else `frozen` if `freeze_bn` else `train`.
    `device="meta"` builds without memory. Never downloads anything."""
    if name not in ENCODERS:
        raise OptionError(f"unknown encoder {name!r}; valid names: {', '.join(ENCODERS)}")
    if device is None:
        encoder = ENCODERS[name](freeze_bn)
    else:
        with torch.device(device):
            encoder = ENCODERS[name](freeze_bn)
    if dtype is not None:
        encoder = encoder.to(dtype=dtype)
    if pretrained is not None:
        from lofi.models.pretrained import load_pretrained

        encoder.pretrained_report = load_pretrained(encoder, pretrained)
    if bn_mode is not None:
        encoder.set_bn_mode(bn_mode)
    return encoder
