"""Decode a clip of TR snippets x F frames from a video file with PyAV.

Speed (the trainer reads every video at full fidelity, TR=100 and F=8, at least once):
- decoder threads on (`thread_type = "AUTO"`: frame and slice threads);
- FFmpeg's swscale resizes a frame (short side to SR, in YUV) and converts it to
  planar RGB only when a target needs it; every other decoded frame is dropped
  untouched, and no full-size frame is ever converted or resized in Python;
- dense sampling decodes the video once, in order; sparse sampling first reads the
  packet index (demuxing only, no decoding) to learn where the keyframes are, then seeks
  to the keyframe before each region whose keyframe lies past the decoding position
  (see `sampling.plan_runs`).

Timestamps: frame times come from pts (dts when the pts are inconsistent, as in AVI
files with packed B-frames), relative to the stream's start, so variable frame rates
work; each target time takes the nearest decoded frame.

Errors: a file that cannot be opened, has no video stream, yields no frame, fails on
many packets, or ends well before its own header says (truncated) raises
VideoDecodeError naming the file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from pathlib import Path

import av
import numpy as np
import torch

from lofi.data.frames import read_frames_clip
from lofi.data.media_source import MediaInfo, MediaSource
from lofi.data.clip_times import (DEFAULT_FPS, MIN_SKIP_FRAMES, STRIDE, Run, TimestampGuesser,
                                check_stride, near_any, plan_runs, snippet_times)
from lofi.data.transforms import Augment, CropPlan, crop_plane, plan_crop
from lofi.errors import VideoDecodeError
from planner.fidelity import Fidelity

MAX_BAD_PACKETS = 8  # packets that may fail to decode before the file counts as corrupt
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
    with _open(path) as container:
        stream = _video_stream(container, path, threads)
        timing = _timing(container, stream)
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
    with _open(path) as container:
        stream = _video_stream(container, path, threads=1)
        timing = _timing(container, stream)
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
    container: av.container.InputContainer, stream: av.VideoStream, timing: _Timing,
    duration: float | None, fidelity: Fidelity, stride: int, path: Path,
) -> np.ndarray:
    """(TR, F) target times over `duration`, or over the media's own duration."""
    span = duration if duration is not None else timing.claimed
    if span is None:
        span = _scan(container, stream, timing, path).end
    if not span > 0:
        raise VideoDecodeError(f"{path}: duration {span} is not positive")
    return snippet_times(span, timing.fps, fidelity.tr, fidelity.frames_per_snippet, stride)


def probe_video(path: str | Path, *, deep: bool = False) -> MediaInfo:
    """Open `path`, decode its first frame and return what the container says.

    deep: also demux every packet (no decoding) to catch truncated files; the duration
    is then where the data really ends."""
    path = Path(path)
    with _open(path) as container:
        stream = _video_stream(container, path, threads=1)
        timing = _timing(container, stream)
        duration = timing.claimed
        if deep:
            duration = _scan(container, stream, timing, path).end
        elif duration is None and container.duration:
            duration = container.duration / av.time_base  # all streams: close enough here
        elif duration is None:
            duration = _scan(container, stream, timing, path).end
        first = next(_frames(container, stream, timing, path), None)
        if first is None:
            raise VideoDecodeError(f"{path}: no video frame could be decoded")
        frame = first[1]
        count = stream.frames or None
        return MediaInfo(duration, timing.fps, count, frame.width, frame.height)


@dataclass(frozen=True)
class _Timing:
    time_base: Fraction  # seconds per pts unit
    start: int  # pts of the stream's first frame (time 0 of the clip)
    fps: float  # average frame rate (DEFAULT_FPS when the container has none)
    claimed: float | None  # duration the header claims for the video, seconds

    @property
    def period(self) -> float:
        return 1.0 / self.fps


@dataclass(frozen=True)
class _Index:
    keyframes: np.ndarray  # (K,) seconds, sorted
    end: float  # seconds: end of the last packet


def _open(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise VideoDecodeError(f"{path}: video file not found")
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError) as error:
        raise VideoDecodeError(f"{path}: cannot open the video ({error})") from None


def _video_stream(container: av.container.InputContainer, path: Path, threads: int) -> av.VideoStream:
    if not container.streams.video:
        raise VideoDecodeError(f"{path}: no video stream in the file")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    stream.thread_count = max(0, threads)
    return stream


def _timing(container: av.container.InputContainer, stream: av.VideoStream) -> _Timing:
    time_base = stream.time_base or Fraction(1, 1_000_000)
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else DEFAULT_FPS
    tagged = _tag_seconds(stream.metadata.get("DURATION"))  # Matroska muxed by FFmpeg
    if stream.duration:
        claimed: float | None = float(stream.duration * time_base)
    elif tagged is not None:
        claimed = tagged
    elif container.duration and len(container.streams) == 1:
        claimed = container.duration / av.time_base  # the only stream: the container's
    elif stream.frames:
        claimed = stream.frames / fps
    else:
        claimed = None
    return _Timing(time_base, stream.start_time or 0, fps, claimed)


def _tag_seconds(value: str | None) -> float | None:
    """'HH:MM:SS.fraction' -> seconds; None when absent or malformed."""
    try:
        hours, minutes, seconds = str(value).split(":")
        total = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None
    return total if total > 0 else None


def _frames(
    container: av.container.InputContainer, stream: av.VideoStream, timing: _Timing, path: Path,
    keep: Callable[[float], bool] | None = None,
) -> Iterator[tuple[float, av.VideoFrame]]:
    """Decoded frames from the current position with their times (seconds from the
    stream start, non-decreasing). Packets that fail are skipped up to a limit.

    keep(packet time): when given, a packet whose frame is not kept is decoded with
    `skip_frame = NONREF`, i.e. dropped by the decoder if no other frame references it
    (B-frames, mostly): their decoding is most of what sparse frame picks can save."""
    guess = TimestampGuesser()
    seconds_per_tick = float(timing.time_base)
    context = stream.codec_context
    discarding = False
    last: float | None = None
    bad = 0
    try:
        for packet in container.demux(stream):
            if keep is not None and packet.pts is not None:
                discard = not keep((packet.pts - timing.start) * seconds_per_tick)
                if discard != discarding:
                    context.skip_frame = "NONREF" if discard else "DEFAULT"
                    discarding = discard
            try:
                decoded = packet.decode()
            except av.FFmpegError as error:
                bad += 1
                if bad > MAX_BAD_PACKETS:
                    raise VideoDecodeError(
                        f"{path}: {bad} packets failed to decode (last: {error})") from None
                continue
            for frame in decoded:
                stamp = guess(frame.pts, frame.dts)
                if stamp is None:
                    time = 0.0 if last is None else last + timing.period
                else:
                    time = (stamp - timing.start) * seconds_per_tick
                time = time if last is None else max(time, last)
                last = time
                yield time, frame
    except av.FFmpegError as error:  # demuxing itself failed
        raise VideoDecodeError(f"{path}: cannot read the video ({error})") from None
    finally:
        if discarding:
            context.skip_frame = "DEFAULT"


def _scan(
    container: av.container.InputContainer, stream: av.VideoStream, timing: _Timing, path: Path
) -> _Index:
    """Demux every packet of the stream (no decoding): keyframe times and data end.
    Leaves the demuxer at the start of the stream."""
    keyframes: list[float] = []
    end = 0.0
    try:
        for packet in container.demux(stream):
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is None or packet.size == 0:
                continue
            time = float((stamp - timing.start) * timing.time_base)
            end = max(end, time + float((packet.duration or 0) * timing.time_base))
            if packet.is_keyframe:
                keyframes.append(time)
    except av.FFmpegError as error:
        raise VideoDecodeError(f"{path}: cannot read the video ({error})") from None
    if not keyframes:
        raise VideoDecodeError(f"{path}: no keyframe in the video stream")
    _check_end(path, end, timing, needed=None)
    _seek(container, stream, timing, 0.0, path)  # back to the start for the decoding
    return _Index(np.unique(np.asarray(keyframes)), end)


def _check_end(path: Path, end: float, timing: _Timing, needed: float | None) -> None:
    """Raise when the data stops well before the header's duration (a truncated file)
    and, when `needed` is given, before that time."""
    if timing.claimed is None:
        return
    tolerance = max(0.5, 0.02 * timing.claimed, 3 * timing.period)
    if end < timing.claimed - tolerance and (needed is None or needed > end + timing.period):
        raise VideoDecodeError(
            f"{path}: truncated: the video data ends at {end:.2f} s but the file "
            f"header says {timing.claimed:.2f} s")


def _plan(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    timing: _Timing,
    unique: np.ndarray,  # (U,) sorted target times
    path: Path,
) -> list[Run]:
    """One sequential run when no gap between targets could pay for a seek; otherwise
    read the keyframe index and let `plan_runs` decide where to seek."""
    gaps = np.diff(unique)
    if gaps.size == 0 or gaps.max() <= MIN_SKIP_FRAMES * timing.period:
        return [Run(None, 0, unique.size - 1)]
    index = _scan(container, stream, timing, path)
    return plan_runs(unique, index.keyframes, timing.period)


def _seek(
    container: av.container.InputContainer, stream: av.VideoStream, timing: _Timing,
    time: float, path: Path,
) -> None:
    """Move the demuxer to the keyframe at or before `time` (seconds from the start)."""
    offset = timing.start + round(Fraction(time) / timing.time_base)
    try:
        container.seek(offset, stream=stream, backward=True, any_frame=False)
    except av.FFmpegError as error:
        raise VideoDecodeError(f"{path}: seek to {time:.2f} s failed ({error})") from None


def _decode_runs(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    timing: _Timing,
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
            _seek(container, stream, timing, run.seek, path)
        position = run.first
        previous: tuple[float, av.VideoFrame] | None = None
        frames = _frames(container, stream, timing, path, keep)
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
                _check_end(path, previous[0] + timing.period, timing, needed=float(unique[run.last]))
            while position <= run.last:
                put(position, previous[1])
                position += 1
        frames.close()
