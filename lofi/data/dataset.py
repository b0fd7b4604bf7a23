"""A torch Dataset of annotated videos: each item is a decoded clip at a fidelity plus
the ground truth the TAL head's labels are built from (segments in seconds, class ids).

`dataset[i]` reads at the dataset's default fidelity, `dataset[(i, fidelity)]` at any
other, so a batch sampler can switch fidelity every N batches (C-LoFi's short cycle,
PAPER.md). A video that fails to decode becomes a `SkippedSample` (never an exception
in a DataLoader worker); `collate_clips` keeps the good items and lists the skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from lofi.data.annotations import VideoRecord
from lofi.data.media_source import MediaSource
from lofi.data.clip_times import STRIDE, check_stride
from lofi.data.transforms import Augment
from lofi.data.video import read_clip
from lofi.errors import OptionError, VideoDecodeError
from planner.fidelity import Fidelity


@dataclass(frozen=True)
class ClipSample:
    video_id: str
    clip: torch.Tensor  # (TR, F, 3, SR, SR) uint8
    duration: float  # seconds covered by the clip (the annotation's duration)
    segments: torch.Tensor  # (N, 2) float32, seconds
    labels: torch.Tensor  # (N,) int64, indices into class_names
    fidelity: Fidelity | None = None  # the fidelity the clip was read at


@dataclass(frozen=True)
class SkippedSample:
    video_id: str
    reason: str
    fidelity: Fidelity | None = None


@dataclass(frozen=True)
class ClipBatch:
    video_ids: list[str]
    clips: torch.Tensor  # (B, TR, F, 3, SR, SR) uint8
    durations: torch.Tensor  # (B,) float64
    segments: list[torch.Tensor]  # B x (N_b, 2) float32
    labels: list[torch.Tensor]  # B x (N_b,) int64
    skipped: list[SkippedSample]
    fidelity: Fidelity | None = None  # of the clips; None for a batch without clips


class VideoDataset(Dataset):
    """Clips of `records` whose media is in `media` (records without media are left out
    and listed in `missing`; find them with `check_media` first).

    augment: True for the default training augmentation (random scale/crop/flip), an
    `Augment` for a custom one, False for centre crops. stride: source frames between
    the frames of a snippet, for every item (sampling.STRIDE, the paper's 8; a smaller
    one for low-rate videos). Randomness is drawn from
    numpy's generator seeded with (seed, epoch, index): the same item in the same
    epoch gives the same clip in any worker; call `set_epoch` to vary it."""

    def __init__(
        self,
        records: Sequence[VideoRecord],
        media: Mapping[str, MediaSource],
        fidelity: Fidelity,
        class_names: Sequence[str],
        *,
        augment: bool | Augment = False,
        seed: int = 0,
        decoder_threads: int = 0,
        stride: int = STRIDE,
    ) -> None:
        self.stride = check_stride(stride)
        index = {name: number for number, name in enumerate(class_names)}
        self.records = tuple(record for record in records if record.video_id in media)
        self.missing = tuple(record.video_id for record in records if record.video_id not in media)
        for record in self.records:
            for segment in record.segments:
                if segment.label not in index:
                    raise OptionError(f"video {record.video_id!r}: label {segment.label!r} "
                                      "is not in the class list")
        self.media = dict(media)
        self.fidelity = fidelity
        self.class_names = tuple(class_names)
        self.class_index = index
        self.augment = Augment() if augment is True else (augment or None)
        self.seed = seed
        self.epoch = 0
        self.decoder_threads = decoder_threads
        self.skipped = 0  # items skipped in this process (workers keep their own)

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, key: int | tuple[int, Fidelity]) -> ClipSample | SkippedSample:
        index, fidelity = key if isinstance(key, tuple) else (key, self.fidelity)
        record = self.records[index]
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.augment else None
        try:
            clip = read_clip(self.media[record.video_id], fidelity, duration=record.duration,
                             augment=self.augment, rng=rng, fps=record.fps,
                             threads=self.decoder_threads, stride=self.stride)
        except (VideoDecodeError, OSError) as error:
            self.skipped += 1
            return SkippedSample(record.video_id, str(error), fidelity)
        segments, labels = self.ground_truth(record)
        return ClipSample(record.video_id, clip, record.duration, segments, labels, fidelity)

    def ground_truth(self, record: VideoRecord) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 2) float32 segments in seconds and (N,) int64 class ids of a record."""
        segments = torch.tensor([[s.start, s.end] for s in record.segments],
                                dtype=torch.float32).reshape(-1, 2)  # (N, 2)
        labels = torch.tensor([self.class_index[s.label] for s in record.segments],
                              dtype=torch.int64)  # (N,)
        return segments, labels


def collate_clips(items: Sequence[ClipSample | SkippedSample]) -> ClipBatch:
    """Stack the clips of the good items; skipped ones go to `skipped`. All good items
    must share one fidelity. A batch of only skipped items has zero clips."""
    good = [item for item in items if isinstance(item, ClipSample)]
    skipped = [item for item in items if isinstance(item, SkippedSample)]
    fidelities = {item.fidelity for item in good}
    if len(fidelities) > 1:
        raise ValueError(f"a batch mixes fidelities: {sorted(f.label() for f in fidelities)}")
    if good:
        clips = torch.stack([item.clip for item in good])  # (B, TR, F, 3, SR, SR)
    else:
        fidelity = next((item.fidelity for item in skipped if item.fidelity is not None), None)
        shape = (0,) if fidelity is None else (
            0, fidelity.tr, fidelity.frames_per_snippet, 3, fidelity.sr, fidelity.sr)
        clips = torch.empty(shape, dtype=torch.uint8)
    return ClipBatch(
        video_ids=[item.video_id for item in good],
        clips=clips,
        durations=torch.tensor([item.duration for item in good], dtype=torch.float64),  # (B,)
        segments=[item.segments for item in good],
        labels=[item.labels for item in good],
        skipped=skipped,
        fidelity=next(iter(fidelities), None),
    )
