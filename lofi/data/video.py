"""Decode a clip of TR snippets x F frames from a video file with PyAV.

Speed (the trainer reads every video at full fidelity, TR=100 and F=8, at least once):
- decoder threads on (`thread_type = "AUTO"`: frame and slice threads);
- FFmpeg's swscale resizes a frame (short side to SR, in YUV) and converts it to
  planar RGB only when a target needs it; every other decoded frame is dropped
  untouched, and no full-size frame is ever converted or resized in Python;
- dense sampling decodes the video once, in order; sparse sampling first reads the
  packet index (demuxing only, no decoding) to learn where the keyframes are, then seeks
  to the keyframe before each region whose keyframe lies past the decoding position
  (see `clip_times.plan_runs`).

Timestamps: each target time takes the nearest decoded frame; frame times, the packet
index and seeking come from `lofi.data.video_container`.

Errors: a file that cannot be opened, has no video stream, yields no frame, fails on
many packets, or ends well before its own header says (truncated) raises
VideoDecodeError naming the file.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import av
import numpy as np
import torch

from lofi.data.frames import read_frames_clip
from lofi.data.media_source import MediaInfo, MediaSource
from lofi.data.clip_times import MIN_SKIP_FRAMES, STRIDE, Run, check_stride, near_any, plan_runs, snippet_times
from lofi.data.video_container import (Timing, check_end, decoded_frames, first_video_stream, open_video,
                                        scan_packets, seek, stream_timing)
from lofi.data.transforms import Augment, CropPlan, crop_plane, plan_crop
from lofi.errors import VideoDecodeError
from planner.fidelity import Fidelity

# Demuxers whose packet pts are presentation times (used to drop unneeded frames).
_RELIABLE_PACKET_TIMES = {"mov", "mp4", "matroska", "webm"}


def read_clip(
    source: MediaSource,
    fidelity: Fidelity,
    *,
    duration: float | None,
    augment: Augment | None = None,
    rng: np.random.Generator | None = None,
    fps: float | None = None,
    threads: int = 0,
    stride: int = STRIDE,
) -> torch.Tensor:
    """(TR, F, 3, SR, SR) uint8 clip of a video file or frame folder.

    duration: the span (seconds) the snippets cover, normally the annotation's, so that
      segment times and snippets agree; None: the media's own duration.
    augment/rng: random scale, crop and flip (one draw per clip); None: centre crop.
    fps: frame rate of a frame folder (videos carry their own). threads: decoder threads
      (0: FFmpeg decides); use 1-2 inside many DataLoader workers.
    stride: source frames between the frames of a snippet (sampling.STRIDE, the paper's 8).
    Raises OptionError for a stride < 1, VideoDecodeError naming the file for corrupt or
    unreadable media."""
    stride = check_stride(stride)
    if source.kind == "frames":
        return read_frames_clip(source.path, fidelity, duration=duration, fps=fps,
                                augment=augment, rng=rng, stride=stride)
    return read_video_clip(source.path, fidelity, duration=duration, augment=augment, rng=rng,
                           threads=threads, stride=stride)


def read_video_clip(
    path: str | Path,
    fidelity: Fidelity,
    *,
    duration: float | None = None,
    augment: Augment | None = None,
    rng: np.random.Generator | None = None,
    threads: int = 0,
    stride: int = STRIDE,
) -> torch.Tensor:
    """See `read_clip`; `path` is a video file."""
    path, stride = Path(path), check_stride(stride)
    tr, f, sr = fidelity.tr, fidelity.frames_per_snippet, fidelity.sr
    with open_video(path) as container:
        stream = first_video_stream(container, path, threads)
        timing = stream_timing(container, stream)
        targets = _targets(container, stream, timing, duration, fidelity, stride, path)  # (TR, F)
        unique, inverse = np.unique(targets, return_inverse=True)  # (U,), (TR, F)
        writer = _ClipWriter(inverse.reshape(-1), sr, augment, rng)
        runs = _plan(container, stream, timing, unique, path)
        try:
            _decode_runs(container, stream, timing, unique, runs, writer.put, path)
        except av.FFmpegError as error:  # e.g. a frame swscale cannot convert
            raise VideoDecodeError(f"{path}: decoding failed ({error})") from None
    return torch.from_numpy(writer.out.reshape(tr, f, 3, sr, sr))


def decode_plan(
    path: str | Path, fidelity: Fidelity, *, duration: float | None = None, stride: int = STRIDE,
) -> list[Run]:
    """The runs `read_video_clip` would decode: one run without a seek means dense,
    sequential decoding; several mean seeks to keyframes (sparse)."""
    path, stride = Path(path), check_stride(stride)
    with open_video(path) as container:
        stream = first_video_stream(container, path, threads=1)
        timing = stream_timing(container, stream)
        targets = _targets(container, stream, timing, duration, fidelity, stride, path)
        return _plan(container, stream, timing, np.unique(targets), path)


class _ClipWriter:
    """Converts the frames chosen for the targets and writes them into the clip.

    Conversion: swscale resizes in YUV 4:2:0 first, then a second context converts to
    RGB at the small size; the crop is copied into the (3, SR, SR) slot.
    On a 320x240 H.264 video this took 0.12 ms a frame against 0.45 ms for one
    resize-to-rgb24 pass (CPU time, PyAV 18.1). A frame that serves several targets
    (short videos) is converted once."""

    def __init__(self, inverse: np.ndarray, sr: int, augment: Augment | None,
                 rng: np.random.Generator | None) -> None:
        order = np.argsort(inverse, kind="stable")
        self.slots = np.split(order, np.cumsum(np.bincount(inverse))[:-1])  # per unique target
        self.out = np.empty((inverse.size, 3, sr, sr), dtype=np.uint8)  # (TR*F, 3, SR, SR)
        self.sr, self.augment, self.rng = sr, augment, rng
        self.plan: CropPlan | None = None
        self.scale = av.video.reformatter.VideoReformatter()
        self.to_rgb = av.video.reformatter.VideoReformatter()
        self.last: tuple[av.VideoFrame, np.ndarray] | None = None

    def put(self, position: int, frame: av.VideoFrame) -> None:
        if self.last is None or self.last[0] is not frame:
            self.last = (frame, self._convert(frame))
        self.out[self.slots[position]] = self.last[1]

    def _convert(self, frame: av.VideoFrame) -> np.ndarray:
        if self.plan is None:  # one crop for the whole clip, from the first frame's size
            self.plan = plan_crop(frame.width, frame.height, self.sr, self.augment, self.rng)
        plan = self.plan
        small = self.scale.reformat(frame, width=plan.width, height=plan.height, format="yuv420p")
        # Packed rgb24, not planar gbrp: FFmpeg's yuv420p -> gbrp converter leaves pixels
        # near the right edge different from run to run when the width is not a multiple
        # of 16 (tests/test_video.py checks repeated reads are identical).
        rgb = self.to_rgb.reformat(small, format="rgb24").to_ndarray()  # (H, W, 3)
        red, green, blue = (rgb[..., index] for index in range(3))
        return np.stack([crop_plane(red, plan), crop_plane(green, plan), crop_plane(blue, plan)])


def _targets(
    container: av.container.InputContainer, stream: av.VideoStream, timing: Timing,
    duration: float | None, fidelity: Fidelity, stride: int, path: Path,
) -> np.ndarray:
    """(TR, F) target times over `duration`, or over the media's own duration."""
    span = duration if duration is not None else timing.claimed
    if span is None:
        span = scan_packets(container, stream, timing, path).end
    if not span > 0:
        raise VideoDecodeError(f"{path}: duration {span} is not positive")
    return snippet_times(span, timing.fps, fidelity.tr, fidelity.frames_per_snippet, stride)


def probe_video(path: str | Path, *, deep: bool = False) -> MediaInfo:
    """Open `path`, decode its first frame and return what the container says.

    deep: also demux every packet (no decoding) to catch truncated files; the duration
    is then where the data really ends."""
    path = Path(path)
    with open_video(path) as container:
        stream = first_video_stream(container, path, threads=1)
        timing = stream_timing(container, stream)
        duration = timing.claimed
        if deep:
            duration = scan_packets(container, stream, timing, path).end
        elif duration is None and container.duration:
            duration = container.duration / av.time_base  # all streams: close enough here
        elif duration is None:
            duration = scan_packets(container, stream, timing, path).end
        first = next(decoded_frames(container, stream, timing, path), None)
        if first is None:
            raise VideoDecodeError(f"{path}: no video frame could be decoded")
        frame = first[1]
        count = stream.frames or None
        return MediaInfo(duration, timing.fps, count, frame.width, frame.height)


def _plan(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    timing: Timing,
    unique: np.ndarray,  # (U,) sorted target times
    path: Path,
) -> list[Run]:
    """One sequential run when no gap between targets could pay for a seek; otherwise
    read the keyframe index and let `plan_runs` decide where to seek."""
    gaps = np.diff(unique)
    if gaps.size == 0 or gaps.max() <= MIN_SKIP_FRAMES * timing.period:
        return [Run(None, 0, unique.size - 1)]
    index = scan_packets(container, stream, timing, path)
    return plan_runs(unique, index.keyframes, timing.period)


def _decode_runs(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    timing: Timing,
    unique: np.ndarray,  # (U,) sorted target times, seconds
    runs: list[Run],
    put: Callable[[int, av.VideoFrame], None],
    path: Path,
) -> None:
    """Give every target the nearest decoded frame: `put(target position, frame)`.
    A frame is final for a target once the next frame is past their midpoint.

    Frames more than one (average) frame period from every target are not needed;
    where packet times are reliable (MP4/MOV, Matroska/WebM; not AVI, whose packet times
    follow decoding order) the decoder drops such frames when nothing references them.
    At a constant rate the nearest frame is always kept; in a variable-rate stream a
    target in a gap wider than two periods may take the frame next to the nearest."""
    keep = None
    if set(container.format.name.split(",")) & _RELIABLE_PACKET_TIMES:
        keep = partial(near_any, targets=unique.tolist(), margin=timing.period)
    for run in runs:
        if run.seek is not None:
            seek(container, stream, timing, run.seek, path)
        position = run.first
        previous: tuple[float, av.VideoFrame] | None = None
        frames = decoded_frames(container, stream, timing, path, keep)
        for time, frame in frames:
            if previous is not None:
                midpoint = (previous[0] + time) / 2.0
                while position <= run.last and unique[position] <= midpoint:
                    put(position, previous[1])
                    position += 1
                if position > run.last:
                    break
            previous = (time, frame)
        else:  # the stream ended: the rest take the last frame, unless data is missing
            if previous is None:
                raise VideoDecodeError(f"{path}: no video frame could be decoded")
            if position <= run.last:
                check_end(path, previous[0] + timing.period, timing, needed=float(unique[run.last]))
            while position <= run.last:
                put(position, previous[1])
                position += 1
        frames.close()
