"""Where each annotated video lives on disk, and whether it can be read.

A media folder holds either video files (`v_<id>.mp4` as ActivityNet downloads name
them, or `<id>.mp4`; also .mkv, .webm, .avi, .mov) or one folder of JPEG frames per
video (`<id>/img_00001.jpg`, or `v_<id>/...`). Ids are checked before any path is
built from them. `check_media` matches annotations to media once, up front, so that a
missing or unreadable video is reported and skipped instead of failing an epoch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lofi.data.annotations import VideoRecord, check_video_id
from lofi.data.frames import probe_frames
from lofi.data.media_source import MediaInfo, MediaSource
from lofi.data.video import probe_video
from lofi.errors import InputFileError, VideoDecodeError
from planner.atomic_files import atomic_write_text

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".mkv", ".webm", ".avi", ".mov")
FIRST_FRAME = "img_00001.jpg"
_PREFIXES = ("v_", "")  # ActivityNet files are v_<id>.mp4; ids in the JSON lack the v_


@dataclass(frozen=True)
class Unreadable:
    video_id: str
    path: Path
    reason: str


@dataclass(frozen=True)
class DurationMismatch:
    video_id: str
    annotated: float  # seconds, from the annotation file
    measured: float  # seconds, from the media


@dataclass(frozen=True)
class MediaReport:
    found: dict[str, MediaSource]  # readable media, by video id: what a dataset may use
    missing: tuple[str, ...]  # ids with no file or frame folder
    unreadable: tuple[Unreadable, ...]
    mismatches: tuple[DurationMismatch, ...]  # readable, but the durations disagree
    root: Path

    @property
    def total(self) -> int:
        return len(self.found) + len(self.missing) + len(self.unreadable)

    def listing(self) -> str:
        """One line per problem, tab-separated: status, video id, detail."""
        lines = ["status\tvideo_id\tdetail"]
        lines += [f"missing\t{video_id}\tno file or frame folder under {self.root}"
                  for video_id in self.missing]
        lines += [f"unreadable\t{item.video_id}\t{_one_line(item.reason)}" for item in self.unreadable]
        lines += [f"duration\t{item.video_id}\tannotated {item.annotated:.2f}s, "
                  f"media {item.measured:.2f}s" for item in self.mismatches]
        return "\n".join(lines) + "\n"


def find_media(
    root: str | os.PathLike, video_id: str, *, frames: bool | None = None
) -> MediaSource | None:
    """The file or frame folder of `video_id` under `root`, or None.

    frames: False looks for video files only, True for frame folders only, None for
    both (video files first)."""
    return _find(Path(root), video_id, frames, listing=None)


def _find(root: Path, video_id: str, frames: bool | None,
          listing: dict[str, bool] | None) -> MediaSource | None:
    """`find_media`; with `listing` (entry name -> is a folder) no stat per candidate."""
    check_video_id(video_id)
    if frames is not True:
        for prefix in _PREFIXES:
            for extension in VIDEO_EXTENSIONS:
                for suffix in (extension, extension.upper()):
                    name = f"{prefix}{video_id}{suffix}"
                    if (listing.get(name) is False) if listing is not None else (root / name).is_file():
                        return MediaSource(video_id, root / name, "video")
    if frames is not False:
        for prefix in _PREFIXES:
            name = f"{prefix}{video_id}"
            if listing is not None and not listing.get(name):
                continue
            if (root / name / FIRST_FRAME).is_file():
                return MediaSource(video_id, root / name, "frames")
    return None


def _list_folder(root: Path) -> dict[str, bool]:
    """Entry name -> whether it is a folder (symbolic links followed)."""
    listing = {}
    with os.scandir(root) as entries:
        for entry in entries:
            try:
                listing[entry.name] = entry.is_dir()
            except OSError:
                continue
    return listing


def probe_media(source: MediaSource, *, fps: float | None = None, deep: bool = False) -> MediaInfo:
    """Open the media and decode its first frame; raises VideoDecodeError naming the file.

    fps: the frame rate of a frame folder (from the annotation); ignored for videos.
    deep: also read every packet of a video to detect truncation (reads the whole file)."""
    if source.kind == "frames":
        return probe_frames(source.path, fps=fps)
    return probe_video(source.path, deep=deep)


def check_media(
    records: Iterable[VideoRecord],
    root: str | os.PathLike,
    *,
    frames: bool = False,
    progress: Callable[[int, int], None] | None = None,
    deep: bool = False,
    workers: int = 1,
    tolerance_s: float = 1.0,
    tolerance_rel: float = 0.05,
) -> MediaReport:
    """Find and open the media of every record.

    frames: look for frame folders instead of video files. progress(done, total) is
    called after each record. A duration mismatch is |media - annotation| >
    max(tolerance_s, tolerance_rel * annotation). workers > 1 probes in threads (FFmpeg
    does its I/O and parsing outside the GIL)."""
    root = Path(root)
    if not root.is_dir():
        raise InputFileError(f"{root}: media folder not found")
    records = list(records)
    listing = _list_folder(root)  # one directory read instead of ~20 stats per video

    def inspect(record: VideoRecord) -> tuple[VideoRecord, MediaSource | None, MediaInfo | str]:
        source = _find(root, record.video_id, frames, listing)
        if source is None:
            return record, None, "missing"
        try:
            return record, source, probe_media(source, fps=record.fps, deep=deep)
        except VideoDecodeError as error:
            return record, source, str(error)

    found: dict[str, MediaSource] = {}
    missing: list[str] = []
    unreadable: list[Unreadable] = []
    mismatches: list[DurationMismatch] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for done, (record, source, info) in enumerate(pool.map(inspect, records), start=1):
            if source is None:
                missing.append(record.video_id)
            elif isinstance(info, str):
                unreadable.append(Unreadable(record.video_id, source.path, info))
            else:
                found[record.video_id] = source
                if info.duration is not None and abs(info.duration - record.duration) > max(
                        tolerance_s, tolerance_rel * record.duration):
                    mismatches.append(DurationMismatch(record.video_id, record.duration, info.duration))
            if progress is not None:
                progress(done, len(records))
    return MediaReport(found, tuple(missing), tuple(unreadable), tuple(mismatches), root)


def write_listing(report: MediaReport, path: str | os.PathLike) -> Path:
    """Write `report.listing()` atomically; returns the path."""
    return atomic_write_text(path, report.listing())


def _one_line(text: str) -> str:
    return " ".join(text.split())
