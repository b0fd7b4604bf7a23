"""A video's media on disk (a file or a folder of frames) and what it says about itself:
the types that finding (`media.py`) and decoding (`video.py`, `frames.py`) share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class MediaSource:
    video_id: str
    path: Path  # the video file, or the folder of frames
    kind: Literal["video", "frames"]


@dataclass(frozen=True)
class MediaInfo:
    """What the container (or frame folder) says about itself."""

    duration: float | None  # seconds; None when unknown (frames without a rate)
    fps: float | None
    frames: int | None  # frame count when known
    width: int
    height: int
