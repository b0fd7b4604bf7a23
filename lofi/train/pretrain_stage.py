"""Stage 0, action-classification pre-training (ACP, PAPER.md stage 1): the encoder
learns to classify the trimmed action instances of the training subset, at full
fidelity, from random init. The paper uses Kinetics-400; lofi uses the instances of the
dataset at hand (the synthetic default, or any ActivityNet-format annotations), which
is what a user without Kinetics weights can do.

A training clip is one ground-truth instance: `snippets_per_clip` snippets whose centres
lie inside it (drawn at random each epoch; the nearest snippet when none does), each
embedded by the encoder; the snippet features are averaged (TSN's average consensus,
as TSM trains) and a linear classifier maps them to the classes. Loss: cross-entropy.
BatchNorm trains (`bn_mode="train"`): the encoder starts from random weights.

The weights are saved in torchvision layout (encoder keys plus the classifier's
`fc.weight`/`fc.bias`, which `lofi.models.pretrained` ignores), so `--pretrained` reads
them. `ensure_pretrained` keeps them in the cache root (as the synthetic data) under a
key of everything that determines them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lofi.data.annotations import VideoRecord
from lofi.data.dataset import ClipBatch, VideoDataset, collate_clips
from lofi.data.media_source import MediaSource
from lofi.data.transforms import Augment
from lofi.errors import OptionError
from lofi.models.encoders import VideoEncoder, build_encoder
from lofi.train.config import SYNTH_PRETRAIN, DataConfig, PretrainConfig
from lofi.train.loop import make_optimizer, make_scheduler
from lofi.train.progress import NullProgress, StageProgress
from planner.atomic_files import atomic_write, atomic_write_json

PRETRAIN_VERSION = 1  # part of the cache key: bump when the procedure changes
WEIGHTS_NAME = "encoder.pt"
MANIFEST_NAME = "pretrain.json"


@dataclass(frozen=True)
class PretrainOutcome:
    weights: Path
    epochs: int
    steps: int
    clips: int  # instances seen over all epochs
    last_loss: float | None
    train_accuracy: float | None  # over the last epoch's clips
    seconds: float
    reused: bool = False  # True: found in the cache, nothing trained


class ClipClassifier(nn.Module):
    """clips (N, K, F, 3, SR, SR) -> encoder (N, C, K) -> mean over K -> linear -> (N, classes)."""

    def __init__(self, encoder: VideoEncoder, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.fc = nn.Linear(encoder.out_channels, classes)

    def forward(self, clips: Tensor) -> Tensor:
        features = self.encoder(clips).mean(dim=2)  # (N, C)
        return self.fc(features)  # (N, classes)

    def weights(self) -> dict[str, Tensor]:
        """torchvision layout: the encoder's state dict plus fc.weight and fc.bias."""
        state = {k: v.detach().cpu() for k, v in self.encoder.state_dict().items()}
        state.update({f"fc.{k}": v.detach().cpu() for k, v in self.fc.state_dict().items()})
        return state


def instance_snippets(segments: np.ndarray, duration: float, temporal_dim: int) -> list[np.ndarray]:
    """For each segment (N, 2) in seconds, the indices of the snippets (of `temporal_dim`
    spread uniformly over `duration`, lofi.data.clip_times) whose centre lies inside it;
    the single nearest snippet when none does. Pure."""
    centres = (np.arange(temporal_dim) + 0.5) * (duration / temporal_dim)  # (T,) seconds
    out = []
    for start, end in np.asarray(segments, dtype=np.float64).reshape(-1, 2):
        inside = np.nonzero((centres >= start) & (centres <= end))[0]
        if inside.size == 0:
            inside = np.array([int(np.argmin(np.abs(centres - (start + end) / 2)))])
        out.append(inside)
    return out


def batch_instances(batch: ClipBatch, snippets: int, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """The instance clips of a batch of videos: (N, K, F, 3, SR, SR) uint8 and labels (N,),
    K = `snippets` drawn with replacement among each instance's snippets, in time order."""
    clips, labels = [], []
    temporal_dim = batch.clips.shape[1]
    for b in range(batch.clips.shape[0]):
        chosen = instance_snippets(batch.segments[b].numpy(), float(batch.durations[b]), temporal_dim)
        for indices, label in zip(chosen, batch.labels[b].tolist()):
            picked = np.sort(rng.choice(indices, size=snippets, replace=True))
            clips.append(batch.clips[b, torch.from_numpy(picked)])  # (K, F, 3, SR, SR)
            labels.append(label)
    if not clips:
        return batch.clips.new_zeros((0, snippets, *batch.clips.shape[2:])), torch.zeros(0, dtype=torch.int64)
    return torch.stack(clips), torch.tensor(labels, dtype=torch.int64)


def pretrain_encoder(
    backbone: str,
    records: Sequence[VideoRecord],
    media: Mapping[str, MediaSource],
    classes: Sequence[str],
    data: DataConfig,
    config: PretrainConfig,
    out: str | os.PathLike,
    *,
    device: torch.device,
    progress: StageProgress | None = None,
) -> PretrainOutcome:
    """Train `backbone` as a clip classifier on the instances of `records` at
    `data.full_fidelity`; write the weights to `out` (atomically) and a manifest beside."""
    progress = progress or NullProgress()
    usable = [r for r in records if r.segments and r.video_id in media]
    if not usable:
        raise OptionError("pretrain: no training video with annotated instances and readable media")
    torch.manual_seed(config.seed)
    encoder = build_encoder(backbone, bn_mode="train", device=device)
    model = ClipClassifier(encoder, len(classes)).to(device).train()
    dataset = VideoDataset(usable, media, data.full_fidelity, classes, augment=Augment(flip=data.flip),
                           seed=config.seed, stride=data.stride)
    recipe = config.recipe
    optimizer = make_optimizer(model.parameters(), recipe)
    scheduler = make_scheduler(optimizer, recipe)
    loss_fn = nn.CrossEntropyLoss()
    batches = -(-len(dataset) // config.videos_per_batch)
    progress.start("pretrain", batches * recipe.epochs)
    started = time.perf_counter()
    steps, seen, last_loss, accuracy, history = 0, 0, None, None, []
    for epoch in range(recipe.epochs):
        dataset.set_epoch(epoch)
        rng = np.random.default_rng([config.seed, epoch])
        loader = DataLoader(dataset, batch_size=config.videos_per_batch, collate_fn=collate_clips,
                            shuffle=True, generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
        correct = total = 0
        losses = []
        for batch in loader:
            clips, labels = batch_instances(batch, config.snippets_per_clip, rng)
            if clips.shape[0] == 0:
                progress.advance(1)
                continue
            logits = model(clips.to(device))
            loss = loss_fn(logits, labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            seen += clips.shape[0]
            last_loss = float(loss.detach())
            losses.append(last_loss)
            correct += int((logits.argmax(dim=1).cpu() == labels).sum())
            total += clips.shape[0]
            progress.advance(1, loss=last_loss, lr=optimizer.param_groups[0]["lr"])
        scheduler.step()
        accuracy = correct / total if total else None
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else None,
                        "train_accuracy": accuracy})
    progress.stop()
    path = save_weights(model.weights(), out)
    outcome = PretrainOutcome(path, recipe.epochs, steps, seen, last_loss, accuracy, time.perf_counter() - started)
    atomic_write_json(path.with_name(MANIFEST_NAME), {
        "backbone": backbone, "classes": list(classes), "videos": len(usable), "fidelity": data.full_fidelity.label(),
        "stride": data.stride, "flip": data.flip, "config": asdict(config), "epochs": outcome.epochs, "steps": steps, "clips": seen,
        "last_loss": last_loss, "train_accuracy": accuracy, "seconds": round(outcome.seconds, 2),
        "history": history,
    })
    return outcome


def save_weights(state: Mapping[str, Tensor], out: str | os.PathLike) -> Path:
    """Atomically `torch.save` a state dict (read back with weights_only=True)."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda handle: torch.save(dict(state), handle))


def pretrain_key(backbone: str, data: DataConfig, config: PretrainConfig) -> str:
    """Short hash of everything that determines the pre-trained weights: the training
    annotations' bytes, the media folder, fidelity, stride, backbone and recipe."""
    annotations = hashlib.sha256(Path(data.annotations).read_bytes()).hexdigest()
    text = json.dumps({"version": PRETRAIN_VERSION, "backbone": backbone, "annotations": annotations,
                       "media": str(Path(data.media_root).resolve()), "frames": data.frames,
                       "subset": data.train_subset, "fidelity": asdict(data.full_fidelity), "stride": data.stride,
                       "flip": data.flip,
                       "config": asdict(config)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cached_weights_path(cache_dir: str | os.PathLike, backbone: str, data: DataConfig,
                        config: PretrainConfig) -> Path:
    """Where `ensure_pretrained` keeps these weights: cache_dir/pretrained-<key>/encoder.pt."""
    return Path(cache_dir) / f"pretrained-{pretrain_key(backbone, data, config)}" / WEIGHTS_NAME


def read_manifest(weights: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest written beside pre-trained weights, or None."""
    try:
        return json.loads(Path(weights).with_name(MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def weights_complete(weights: str | os.PathLike) -> bool:
    """True when `weights` and its manifest (written last) both exist."""
    return Path(weights).is_file() and read_manifest(weights) is not None


def pretrain_data(
    backbone: str,
    data: DataConfig,
    config: PretrainConfig,
    out: str | os.PathLike,
    *,
    device: torch.device | None = None,
    progress: StageProgress | None = None,
    reuse: bool = True,
) -> PretrainOutcome:
    """Pre-train on the `data.train_subset` instances of `data` (annotations + media,
    each video probed once first); with `reuse`, complete weights at `out` are kept."""
    from lofi.data.annotations import load_annotations
    from lofi.data.media import check_media

    if reuse and weights_complete(out):
        manifest = read_manifest(out) or {}
        return PretrainOutcome(Path(out), manifest.get("epochs", 0), manifest.get("steps", 0),
                               manifest.get("clips", 0), manifest.get("last_loss"), manifest.get("train_accuracy"),
                               0.0, reused=True)
    annotations = load_annotations(data.annotations)
    records = [r for r in annotations.records if r.subset == data.train_subset]
    report = check_media(records, data.media_root, frames=data.frames, workers=min(4, os.cpu_count() or 1))
    return pretrain_encoder(backbone, records, dict(report.found), annotations.classes, data, config, out,
                            device=device or torch.device("cpu"), progress=progress)


def pretrain_request(*, epochs: int | None = None, lr: float | None = None, seed: int | None = None) -> PretrainConfig:
    """The pre-training config: the synthetic recipe (SYNTH_PRETRAIN) with the
    given overrides."""
    from dataclasses import replace

    base = SYNTH_PRETRAIN
    recipe = replace(base.recipe, **{k: v for k, v in {"epochs": epochs, "lr": lr}.items() if v is not None})
    return replace(base, recipe=recipe, seed=base.seed if seed is None else seed)
