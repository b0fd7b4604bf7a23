"""Stage 2, features: the trained encoder, frozen, embeds every video at full fidelity
(PAPER.md stage 3: TR = 100, SR = 224 by default). One file per video under
`features/`, written atomically and carrying the encoder and fidelity that made it, so
an interrupted extraction (a signal, a crash, a lost rank) reuses every complete file
and embeds only the rest; `index.json`, written last by rank 0, lists them. Under
torchrun each rank embeds a strided share of the videos; barriers order the clean-up
of stale temporary files, the extraction and the index."""

from __future__ import annotations

import io
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
from planner.strict_json import read_json_document
from lofi.train.distributed import DistContext, agree, barrier
from lofi.train.progress import NullProgress, StageProgress
from lofi.train.loop import StopRequest
from planner.fidelity import Fidelity

INDEX = "index.json"


@dataclass(frozen=True)
class FeatureOutcome:
    completed: bool  # False: stopped by a signal (every file written so far is kept)
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
    stop: StopRequest | None = None,
) -> FeatureOutcome:
    """Write features for every video of `dataset` (at its fidelity) into `folder`.
    Each rank takes a strided share; files made by the same encoder at the same
    fidelity are reused. A stop request ends the extraction after the batch in flight
    (its files written) on every rank."""
    progress = progress or NullProgress()
    stop = stop or StopRequest()
    stamp = {"encoder": encoder_tag, "fidelity": _fid(dataset.fidelity)}
    if context.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder)
        (folder / INDEX).unlink(missing_ok=True)  # rewritten when every video is done
    barrier(context, "the start of feature extraction")
    mine = range(context.rank, len(dataset), context.world_size)
    todo = [i for i in mine if not _complete(feature_path(folder, dataset.records[i].video_id), stamp)]
    reused = len(mine) - len(todo)
    encoder.eval()
    loader = DataLoader(Subset(dataset, todo), batch_size=batch_size, collate_fn=collate_clips,
                        num_workers=num_workers, pin_memory=context.device.type == "cuda")
    started = time.perf_counter()
    skipped: list[str] = []
    extracted = 0
    progress.start("features", len(todo))
    for batch in loader:
        skipped += [item.video_id for item in batch.skipped]
        if batch.clips.shape[0]:
            features = embed_clips(encoder, batch.clips, precision)  # (B, C, TR)
            for video_id, feature in zip(batch.video_ids, features):
                _save_features(feature_path(folder, video_id), feature.half().cpu(), stamp)
                extracted += 1
        progress.advance(len(batch.video_ids) + len(batch.skipped))
        if stop.requested:
            break
    progress.stop()
    barrier(context, "the end of feature extraction")
    completed = not agree(context, stop.requested, what="the end of feature extraction")[0]
    if completed and context.is_main:
        present = sorted(r.video_id for r in dataset.records if feature_path(folder, r.video_id).exists())
        atomic_write_json(folder / INDEX, {**stamp, "videos": present})
    barrier(context, "the features index")
    return FeatureOutcome(completed, extracted, reused, skipped, time.perf_counter() - started)


def remove_stale_temporaries(folder: Path) -> int:
    """Delete the temporary files an interrupted atomic write left (`.<name>.*.tmp`);
    called while no rank writes."""
    removed = 0
    for path in Path(folder).glob(".*.tmp"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def read_index(folder: Path) -> dict:
    path = Path(folder) / INDEX
    document = read_json_document(path, InputFileError, "features index",
                                  missing_hint=" (run the features stage first)")
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
                document = _load(path)
            except Exception as error:
                raise InputFileError(f"{path}: unreadable features ({type(error).__name__}); "
                                     "delete it and rerun the features stage") from None
            out[video_id] = document["features"].float()
    return out


def _load(path: Path) -> dict:
    """{"features": (C, T) tensor, "encoder": tag, "fidelity": [TR, SR, F]}; a file of an
    older run (a bare tensor) has no stamp."""
    document = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(document, torch.Tensor):
        return {"features": document}
    if not isinstance(document, dict) or not isinstance(document.get("features"), torch.Tensor):
        raise ValueError("not a features file")
    return document


def _complete(path: Path, stamp: dict) -> bool:
    """A whole file made by the same encoder at the same fidelity (reusable as it is)."""
    if not path.exists():
        return False
    try:
        document = _load(path)
    except Exception:  # truncated or foreign: embed again
        return False
    return document.get("encoder") == stamp["encoder"] and document.get("fidelity") == stamp["fidelity"]


def _save_features(path: Path, tensor: torch.Tensor, stamp: dict) -> None:
    buffer = io.BytesIO()
    torch.save({"features": tensor.clone(), **stamp}, buffer)
    atomic_write(path, lambda file: file.write(buffer.getvalue()))


def _fid(fidelity: Fidelity) -> list[int]:
    return [fidelity.tr, fidelity.sr, fidelity.frames_per_snippet]
