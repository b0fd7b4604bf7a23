"""What the planner traces: a Workload builds the model, optimizer and inputs of one
training step for a candidate's shapes. The planner drives the step itself (forward and
loss under autocast, backward, optimizer step, zero_grad) so that every workload is
traced the same way the trainer runs it. The trainer's package provides its workload
(and its axes, `planner.axes`); `TorchvisionWorkload` below is a small reference one
(tests, docs). The planner never imports a workload's package.

The training step the planner assumes (and the trainer must keep):

    batch = make_batch(...)                      # replaces the previous batch
    with autocast(precision):                    # fp16/bf16 only
        loss = workload.loss(model, batch)
    loss.backward()                              # (accumulation: repeat the lines above)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)        # right after the step
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from planner import checkpointing
from planner.candidate import Candidate
from planner.fidelity import Fidelity

TARGETS = ("cuda", "cpu")


@dataclass(frozen=True)
class ModelSpec:
    """Everything the model (parameters, buffers, checkpointing switch) depends on."""

    backbone: str
    head: str
    fidelity: Fidelity
    checkpointing: str = "none"
    batchnorm: str = "frozen"  # planner.candidate.BATCHNORM
    cycle: tuple[Fidelity, ...] = ()  # every fidelity the same model trains at (a cycle), in order

    @property
    def traced(self) -> ModelSpec:
        """The spec whose step is traced: without the cycle. A cycle member's model
        differs from the single-fidelity one only by state it holds for the other
        members (e.g. a head's sampling matrices), added to the trace as allocations at
        setup (`planner.trace_store.TraceStore.at_batch`)."""
        return replace(self, cycle=())

    @property
    def label(self) -> str:
        cycle = "+".join(f.label() for f in self.cycle)
        return (f"{self.backbone}+{self.head}@{self.fidelity.label()}/{self.checkpointing}/bn-{self.batchnorm}"
                + (f"/cycle {cycle}" if cycle else ""))


@dataclass(frozen=True)
class StepSpec:
    """One traced training step, batch size aside. `precision` fp16 and bf16 trace the
    same (2-byte floats, same autocast rules); `target` picks the optimizer
    implementation PyTorch would use there (foreach on CUDA, per-tensor on CPU)."""

    model: ModelSpec
    precision: str = "fp32"
    optimizer: str = "sgd"
    target: str = "cuda"

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")

    @property
    def traced_precision(self) -> str:
        """bf16 is traced as fp16: identical bytes and casting rules."""
        return "fp16" if self.precision == "bf16" else self.precision

    def canonical(self) -> StepSpec:
        return replace(self, precision=self.traced_precision)

    def traced(self) -> StepSpec:
        """The step that is traced for this one: canonical precision, no cycle."""
        return replace(self, precision=self.traced_precision, model=self.model.traced)


def step_specs(candidate: Candidate, target: str) -> tuple[StepSpec, ...]:
    """The step of each fidelity the candidate trains at (one, or each of its cycle's)."""
    checkpointing.parse(candidate.checkpointing)
    return tuple(
        StepSpec(
            model=ModelSpec(candidate.backbone, candidate.head, fidelity, candidate.checkpointing, candidate.batchnorm,
                            candidate.cycle or ()),
            precision=candidate.precision,
            optimizer=candidate.optimizer,
            target=target,
        )
        for fidelity in candidate.fidelities
    )


@runtime_checkable
class Workload(Protocol):
    """A model family the planner can trace. `key` names the workload and its version:
    change it whenever the model, the loss or the inputs change, since cached traces are
    keyed by it."""

    key: str

    def build_model(self, spec: ModelSpec, device: torch.device) -> nn.Module:
        """The model for `spec` on `device` (the planner passes "meta"), in train mode,
        with its checkpointing policy set. Must depend on nothing but `spec`."""
        ...

    def make_optimizer(self, model: nn.Module, step: StepSpec) -> torch.optim.Optimizer: ...

    def make_batch(self, step: StepSpec, batch_size: int, device: torch.device) -> Any:
        """Inputs and targets of one micro-batch, as the trainer has them on the device."""
        ...

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Forward and loss: a scalar tensor. Runs under autocast for fp16/bf16."""
        ...

    # Optional: `block_savings(spec) -> tuple[int, ...]`, the bytes each block of the
    # model of `spec` frees when checkpointed (`planner.tracing.block_costs.BlockCost.saved_bytes`
    # at a canonical input), in the order `blocks:N` takes them (its length: the most
    # N can be). A workload that has it gets the search over N (`planner.search`).


# The plan's optimizer names (planner.candidate.OPTIMIZERS) -> (torch optimizer, momentum).
# sgd: momentum 0 (no optimizer state); sgd_momentum: the common 0.9.
OPTIMIZER_SETTINGS = {"sgd": ("sgd", 0.0), "sgd_momentum": ("sgd", 0.9), "adam": ("adam", 0.0)}


def build_optimizer(
    parameters: Iterable[nn.Parameter],
    name: str,
    *,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 1e-4,
    foreach: bool | None = None,
) -> torch.optim.Optimizer:
    """SGD (with or without momentum) or Adam over the trainable `parameters`: the one
    optimizer builder, which the planner traces (`sgd_or_adam`) and a trainer builds its
    optimizer with, so that what is planned is what is trained. `foreach=None` lets
    PyTorch choose (multi-tensor on CUDA, per-tensor on the CPU: torch/optim/optimizer.py
    `_default_to_fused_or_foreach`); the planner passes what that choice would be on its
    target."""
    trainable = [p for p in parameters if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(trainable, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=foreach)
    if name == "adam":
        return torch.optim.Adam(trainable, lr=lr, weight_decay=weight_decay, foreach=foreach)
    raise ValueError(f"optimizer must be sgd or adam, got {name!r}")


def optimizer_name(name: str, momentum: float) -> str:
    """The plan's name (planner.candidate.OPTIMIZERS) of a `build_optimizer` setting."""
    if name == "adam":
        return "adam"
    return "sgd_momentum" if momentum > 0 else "sgd"


def sgd_or_adam(model: nn.Module, step: StepSpec, *, lr: float = 0.1, weight_decay: float = 1e-4) -> torch.optim.Optimizer:
    """The optimizer traced for `step` (`build_optimizer` with the plan's optimizer) with
    the implementation PyTorch picks by default on the target: foreach (multi-tensor) on
    CUDA, per-tensor on CPU. Weight decay 1e-4 by default. The learning rate changes no
    allocation."""
    if step.optimizer not in OPTIMIZER_SETTINGS:
        raise ValueError(f"unknown optimizer {step.optimizer!r}")
    name, momentum = OPTIMIZER_SETTINGS[step.optimizer]
    return build_optimizer(model.parameters(), name, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           foreach=step.target == "cuda")


class _Chunked(nn.Module):
    """Runs `body` over the batch `chunk` samples at a time, each chunk one
    non-reentrant checkpoint segment (the reference workload's `chunk:K`)."""

    def __init__(self, body: nn.Module, chunk: int) -> None:
        super().__init__()
        self.body, self.chunk = body, chunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        parts = [checkpoint(self.body, part, use_reentrant=False) for part in x.split(self.chunk)]
        return torch.cat(parts)


class _Blocks(nn.Module):
    """Runs `blocks` in order, those at positions in `segments` as one checkpoint
    segment each (the reference `block` and `blocks:N`)."""

    def __init__(self, blocks: list[nn.Module], segments: frozenset[int]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.segments = segments

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        for index, block in enumerate(self.blocks):
            x = checkpoint(block, x, use_reentrant=False) if index in self.segments else block(x)
        return x


@lru_cache(maxsize=None)
def _torchvision_costs(backbone: str, classes: int) -> tuple:
    import torchvision

    from planner.tracing import block_costs

    with torch.device("meta"):
        net = getattr(torchvision.models, backbone)(num_classes=classes).train()
    blocks = [b for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for b in layer]
    image = torch.empty(1, 3, 224, 224, device="meta")  # (B, 3, H, W)
    return block_costs.measure(lambda: net(image), blocks, [*net.parameters(), *net.buffers()])


@dataclass(frozen=True)
class TorchvisionWorkload:
    """Image classification with a torchvision ResNet: `backbone` is the torchvision
    model name (resnet18, resnet50, ...), the image is SR x SR, TR is ignored, the loss is
    cross-entropy over `classes` classes. A reference Workload for tests and docs."""

    classes: int = 10
    key: str = "torchvision-classifier/1"

    def build_model(self, spec: ModelSpec, device: torch.device) -> nn.Module:
        import torchvision

        builder: Callable[..., nn.Module] = getattr(torchvision.models, spec.backbone)
        with torch.device(device):
            net = builder(num_classes=self.classes)
        policy = checkpointing.parse(spec.checkpointing)
        if policy.kind == "none":
            return net.train()
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        layers = [net.layer1, net.layer2, net.layer3, net.layer4]
        tail = nn.Sequential(net.avgpool, nn.Flatten(1), net.fc)
        blocks = [b for layer in layers for b in layer]
        if policy.kind == "block":
            return nn.Sequential(stem, _Blocks(blocks, frozenset(range(len(blocks)))), tail).train()
        if policy.kind == "blocks":
            if policy.size > len(blocks):  # type: ignore[operator]
                raise ValueError(f"{spec.backbone} has {len(blocks)} blocks; blocks:N needs N <= {len(blocks)}")
            segments = frozenset(self.checkpoint_order(spec.backbone)[: policy.size])
            return nn.Sequential(stem, _Blocks(blocks, segments), tail).train()
        return nn.Sequential(_Chunked(nn.Sequential(stem, *layers), policy.size), tail).train()  # type: ignore[arg-type]

    def block_savings(self, spec: ModelSpec) -> tuple[int, ...]:
        costs = _torchvision_costs(spec.backbone, self.classes)
        return tuple(costs[i].saved_bytes for i in self.checkpoint_order(spec.backbone))

    def checkpoint_order(self, backbone: str) -> tuple[int, ...]:
        """The residual blocks of `backbone`, most saved bytes per recomputed FLOP first
        (measured on a 224 x 224 image; `blocks:N` checkpoints the first N)."""
        from planner.tracing import block_costs

        return block_costs.checkpoint_order(_torchvision_costs(backbone, self.classes))

    def make_optimizer(self, model: nn.Module, step: StepSpec) -> torch.optim.Optimizer:
        return sgd_or_adam(model, step)

    def make_batch(self, step: StepSpec, batch_size: int, device: torch.device) -> Any:
        sr = step.model.fidelity.sr
        images = torch.empty(batch_size, 3, sr, sr, device=device)  # (B, 3, SR, SR)
        labels = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B,)
        return images, labels

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        images, labels = batch
        return nn.functional.cross_entropy(model(images), labels)
