"""Stage 2, features: the trained encoder, frozen, embeds every video at full fidelity
(PAPER.md stage 3: TR = 100, SR = 224 by default). One file per video under
`features/`, each written atomically, so an interrupted extraction resumes where it
stopped; `index.json` is written last and says which encoder and fidelity made them."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from lofi.data.annotations import check_video_id
from lofi.data.dataset import VideoDataset, collate_clips
from lofi.errors import InputFileError
from planner.atomic_files import atomic_write, atomic_write_json
from lofi.train.distributed import DistContext, barrier
from lofi.train.progress import NullProgress, StageProgress
from planner.fidelity import Fidelity

INDEX = "index.json"


@dataclass(frozen=True)
class FeatureOutcome:
    extracted: int
    reused: int
    skipped: list[str]  # video ids whose media could not be decoded
    seconds: float


def feature_path(folder: Path, video_id: str) -> Path:
    return Path(folder) / f"{check_video_id(video_id)}.pt"


def snippet_chunks(tr: int, chunk: int) -> list[slice]:
    return [slice(i, min(i + chunk, tr)) for i in range(0, tr, chunk)]


@torch.inference_mode()
def embed_clips(encoder: nn.Module, clips: torch.Tensor, precision: str, chunk: int = 25) -> torch.Tensor:
    """clips (B, TR, F, 3, SR, SR) -> features (B, C, TR) float32. Snippets are encoded
    `chunk` at a time (each snippet's feature depends on its own frames only), so the
    activation memory of a full-fidelity video stays bounded."""
    device = next(encoder.parameters()).device
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    parts = []
    for part in snippet_chunks(clips.shape[1], chunk):
        x = clips[:, part].to(device, non_blocking=True)
        if dtype is not None and device.type == "cuda":
            with torch.autocast("cuda", dtype=dtype):
                parts.append(encoder(x).float())
        else:
            parts.append(encoder(x).float())
    return torch.cat(parts, dim=2)  # (B, C, TR)


def extract_features(
    encoder: nn.Module,
    dataset: VideoDataset,
    folder: Path,
    context: DistContext,
    *,
    batch_size: int,
    precision: str,
    num_workers: int = 0,
    encoder_tag: str = "",
    progress: StageProgress | None = None,
) -> FeatureOutcome:
    """Write features for every video of `dataset` (at its fidelity) into `folder`.
    Each rank takes a strided share; existing files from the same encoder are reused."""
    progress = progress or NullProgress()
    folder.mkdir(parents=True, exist_ok=True)
    previous = read_index(folder) if (folder / INDEX).exists() else None
    reusable = previous is not None and previous["encoder"] == encoder_tag and previous["fidelity"] == _fid(dataset.fidelity)
    todo = [
        i for i in range(context.rank, len(dataset), context.world_size)
        if not (reusable and feature_path(folder, dataset.records[i].video_id).exists())
    ]
    reused = len(range(context.rank, len(dataset), context.world_size)) - len(todo)
    encoder.eval()
    loader = DataLoader(Subset(dataset, todo), batch_size=batch_size, collate_fn=collate_clips,
                        num_workers=num_workers, pin_memory=context.device.type == "cuda")
    started = time.perf_counter()
    skipped: list[str] = []
    progress.start("features", len(todo))
    for batch in loader:
        skipped += [item.video_id for item in batch.skipped]
        if batch.clips.shape[0]:
            features = embed_clips(encoder, batch.clips, precision)  # (B, C, TR)
            for video_id, feature in zip(batch.video_ids, features):
                _save_tensor(feature_path(folder, video_id), feature.half().cpu())
        progress.advance(len(batch.video_ids) + len(batch.skipped))
    progress.stop()
    barrier(context)
    if context.is_main:
        present = sorted(r.video_id for r in dataset.records if feature_path(folder, r.video_id).exists())
        atomic_write_json(folder / INDEX, {"encoder": encoder_tag, "fidelity": _fid(dataset.fidelity), "videos": present})
    barrier(context)
    return FeatureOutcome(len(todo) - len(skipped), reused, skipped, time.perf_counter() - started)


def read_index(folder: Path) -> dict:
    path = Path(folder) / INDEX
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputFileError(f"{path}: no features index; run the features stage first") from None
    except (OSError, json.JSONDecodeError) as error:
        raise InputFileError(f"{path}: unreadable features index ({error})") from None
    if not isinstance(document, dict) or not {"encoder", "fidelity", "videos"} <= set(document):
        raise InputFileError(f"{path}: not a features index (needs encoder, fidelity, videos)")
    return document


def load_features(folder: Path, video_ids: Sequence[str]) -> dict[str, torch.Tensor]:
    """(C, T) float32 features of each video that has them (weights_only loading)."""
    out = {}
    for video_id in video_ids:
        path = feature_path(folder, video_id)
        if path.exists():
            try:
                out[video_id] = torch.load(path, map_location="cpu", weights_only=True).float()
            except Exception as error:
                raise InputFileError(f"{path}: unreadable features ({type(error).__name__}); "
                                     "delete it and rerun the features stage") from None
    return out


def _save_tensor(path: Path, tensor: torch.Tensor) -> None:
    buffer = io.BytesIO()
    torch.save(tensor.clone(), buffer)
    atomic_write(path, lambda file: file.write(buffer.getvalue()))


def _fid(fidelity: Fidelity) -> list[int]:
    return [fidelity.tr, fidelity.sr, fidelity.frames_per_snippet]
