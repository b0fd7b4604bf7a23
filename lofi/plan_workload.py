"""The LoFi training step as a planner Workload: TSM encoder + TAL head (G-TAD or BMN)
trained end to end with the head's loss, on uint8 clips of the candidate's fidelity.

    clips (B, TR, F, 3, SR, SR) uint8 -> encoder -> (B, C, TR) -> head -> HeadOutput
    loss = tal_loss(output, start (B, T), end (B, T), iou_map (B, T, T), valid anchors (T, T))

T = TR (PAPER.md: "When TR < 100, the anchors of the head are all pairs"). The model and
the optimizer come from the trainer's own builder (`lofi.models.lofi_model`): BatchNorm
frozen or trained as the candidate says, a C-LoFi head holding every member's sampling
matrices, the checkpointing policy, SGD (momentum 0, the paper; or 0.9) or Adam with
the implementation PyTorch picks on the target. The loss is the TAL loss of the batch at
once: the trainer averages each video's loss (`lofi.train.objective`), the same ops
once per video on (T, T) maps, whose memory is well under 1 % of a step's peak, while a
loop over the batch would give traces whose structure depends on the batch size (no
extrapolation between batch sizes). The planner
drives the step (autocast, backward, optimizer step, zero_grad; see
`planner.workload`), as `lofi.train.lofi_stage` does (it computes the loss after
leaving autocast; `tal_loss` casts the head's outputs to float32 first, so the same ops
run either way); tests/test_plan_matches_trainer.py checks that the trainer's own step
allocates what the planner estimates.

The workload's key carries a hash of the model and loss sources (lofi/models/*.py
and this file), so cached traces are not reused after the model changes.

Tracing `chunk:K` fast: a chunked encoder runs the same segment B*TR/K times, and
tracing every chunk would cost seconds per candidate. While the planner traces (a
recorder with compression is active), `_ChunkTraceRunner` runs the first three chunks
for real, puts one zero tensor in place of the outputs of the others, and marks each
chunk's forward and recomputation; `planner.tracing.synthesis.expand_periods` then repeats the
events of a middle chunk (forward and backward) for every chunk skipped. A shorter last
chunk (K not dividing B*TR) is synthesized as a full one: at most one chunk's
activations too many, while that chunk alone is in flight.
Everything else (normalisation, checkpoint segments, concatenation) is the encoder's
own code path; tests/test_plan_workload.py checks the expanded trace against a full one.

Tracing `offload`: the encoder's blocks run under `_TracedOffload` instead of
`save_on_cpu`: the same saved-tensor hooks around the same blocks, but pack records the
bytes that would go to the host (`Trace.host_sizes`) instead of copying them, and unpack
allocates the device copy backward reads. tests/test_offload.py checks it against the
`none` trace and against what `save_on_cpu` packs on real tensors.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import saved_tensors_hooks

from lofi.models.encoder_checkpointing import run_segment
from lofi.models.encoders import VideoEncoder, block_costs, checkpoint_order
from lofi.models.lofi_model import PLAN_BN_MODES, build_lofi_model
from lofi.models.labels import valid_anchor_mask
from lofi.models.losses import tal_loss
from planner.tracing.recorder import active_recorder
from planner.workload import ModelSpec, StepSpec, sgd_or_adam

WORKLOAD_NAME = "lofi-tal/2"  # bump when the inputs or the step change (trace cache key)
REAL_CHUNKS = 3  # chunks traced for real; the others are synthesized from the middle one


@dataclass(frozen=True)
class LofiBatch:
    clips: Tensor  # (B, TR, F, 3, SR, SR) uint8
    start: Tensor  # (B, T) float32
    end: Tensor  # (B, T) float32
    iou_map: Tensor  # (B, T, T) float32
    mask: Tensor  # (T, T) bool, valid anchors


def source_files() -> list[Path]:
    """The sources that define the traced step: every module of lofi/models (the heads'
    subpackage included) and this one."""
    here = Path(__file__).resolve()
    return sorted((here.parent / "models").rglob("*.py")) + [here]


def _source_key() -> str:
    """WORKLOAD_NAME + a hash of the sources that define the traced step."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in source_files():
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return f"{WORKLOAD_NAME}+{digest.hexdigest()[:12]}"


@dataclass(frozen=True)
class LofiWorkload:
    """The planner's view of `lofi train`'s end-to-end step."""

    key: str = field(default_factory=_source_key)
    offloads: bool = True  # the encoder runs `offload` (planner.search probes it where none does not fit)

    def build_model(self, spec: ModelSpec, device: torch.device) -> nn.Module:
        dims = [f.tr for f in spec.cycle] or [spec.fidelity.tr]
        model = build_lofi_model(spec.backbone, spec.head, dims, bn_mode=PLAN_BN_MODES[spec.batchnorm],
                                 checkpointing=spec.checkpointing, device=device)
        if model.encoder._chunk is not None:
            model.encoder.chunk_runner = _ChunkTraceRunner(model.encoder)
        model.encoder.offload_context = _TracedOffload
        return model

    def block_savings(self, spec: ModelSpec) -> tuple[int, ...]:
        """Bytes each residual block of the encoder frees when checkpointed, in the order
        `blocks:N` takes them (`lofi.models.encoders.checkpoint_order`)."""
        costs = block_costs(spec.backbone)
        return tuple(costs[i].saved_bytes for i in checkpoint_order(spec.backbone))

    def make_optimizer(self, model: nn.Module, step: StepSpec) -> torch.optim.Optimizer:
        return sgd_or_adam(model, step)  # the builder the trainer uses too (lofi.train.loop)

    def make_batch(self, step: StepSpec, batch_size: int, device: torch.device) -> LofiBatch:
        f = step.model.fidelity
        t = f.tr
        clips = torch.empty(batch_size, t, f.frames_per_snippet, 3, f.sr, f.sr, dtype=torch.uint8, device=device)
        return LofiBatch(
            clips=clips,
            start=torch.empty(batch_size, t, device=device),
            end=torch.empty(batch_size, t, device=device),
            iou_map=torch.empty(batch_size, t, t, device=device),
            mask=torch.from_numpy(valid_anchor_mask(t)).to(device),  # (T, T)
        )

    def loss(self, model: nn.Module, batch: Any) -> Tensor:
        output = model(batch.clips)
        return tal_loss(output, batch.start, batch.end, batch.iou_map, batch.mask).total


def lofi_workload() -> LofiWorkload:
    return LofiWorkload()


class _ChunkTraceRunner:
    """The chunk loop of `VideoEncoder.forward` under `chunk:K` while the planner traces
    with compression (the plain loop otherwise): same ops (split, one checkpoint segment
    per chunk, cat), but only the first REAL_CHUNKS chunks run."""

    def __init__(self, encoder: VideoEncoder) -> None:
        self.encoder = encoder

    def __call__(self, snippets: Tensor) -> Tensor:
        enc = self.encoder
        chunks = snippets.split(enc._chunk)  # (B*TR, F, 3, SR, SR) in chunks of K
        recorder = active_recorder()
        if recorder is None or not recorder.compress:
            return torch.cat([run_segment(enc._encode, enc, chunk) for chunk in chunks])
        parts: list[Tensor] = []
        for i, chunk in enumerate(chunks[:REAL_CHUNKS]):
            recorder.period("forward", i)
            parts.append(run_segment(_Marked(enc._encode, recorder, i), enc, chunk))
            recorder.period("forward-end", i)
        if len(chunks) > REAL_CHUNKS:  # one stand-in for the outputs of every skipped chunk
            skipped = sum(len(c) for c in chunks[REAL_CHUNKS:])
            stub = torch.zeros(skipped, enc.out_channels, dtype=parts[-1].dtype, device=parts[-1].device)
            recorder.stub(stub, units=skipped, units_per_period=enc._chunk)
            parts.append(stub)
        return torch.cat(parts)  # (B*TR, C)


class _TracedOffload(saved_tensors_hooks):
    """`save_on_cpu(pin_memory=True)` as the planner traces it: pack drops the device
    tensor (its storage is freed once forward lets go of it, as after the real copy to
    the host) and tells the recorder its bytes (`Recorder.host`); unpack allocates a
    device tensor of the same size, dtype and layout, as the real host-to-device copy
    (`Tensor.to`) does. No host tensor is made: on the meta device there is nothing to
    copy, and a host tensor would count as device memory in the trace."""

    def __init__(self) -> None:
        recorder = active_recorder()

        def pack(tensor: Tensor) -> tuple:
            if recorder is not None:
                recorder.host(tensor)
            return tensor.device, tensor.size(), tensor.dtype, tensor.layout

        def unpack(packed: tuple) -> Tensor:
            device, size, dtype, layout = packed
            return torch.empty(size, dtype=dtype, layout=layout, device=device)

        super().__init__(pack, unpack)


class _Marked:
    """The chunk's segment function; marks the start of its recomputation in backward."""

    def __init__(self, fn, recorder, index: int) -> None:
        self.fn, self.recorder, self.index = fn, recorder, index

    def __call__(self, chunk: Tensor) -> Tensor:
        if torch._C._current_graph_task_id() != -1:
            self.recorder.period("recompute", self.index)
        return self.fn(chunk)
