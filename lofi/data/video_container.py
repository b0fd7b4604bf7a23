"""A video file's container through PyAV: open it, its first video stream and timing,
its packet index (keyframe times, where the data ends), seeking, and decoded frames with
their times. `lofi.data.video` decodes clips with them.

Timestamps: frame times come from pts (dts when the pts are inconsistent, as in AVI
files with packed B-frames), relative to the stream's start, so variable frame rates
work. A file that cannot be opened, has no video stream, fails on many packets, or ends
well before its own header says (truncated) raises VideoDecodeError naming the file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from lofi.data.clip_times import DEFAULT_FPS, TimestampGuesser
from lofi.errors import VideoDecodeError

MAX_BAD_PACKETS = 8  # packets that may fail to decode before the file counts as corrupt


@dataclass(frozen=True)
class Timing:
    time_base: Fraction  # seconds per pts unit
    start: int  # pts of the stream's first frame (time 0 of the clip)
    fps: float  # average frame rate (DEFAULT_FPS when the container has none)
    claimed: float | None  # duration the header claims for the video, seconds

    @property
    def period(self) -> float:
        return 1.0 / self.fps


@dataclass(frozen=True)
class PacketIndex:
    keyframes: np.ndarray  # (K,) seconds, sorted
    end: float  # seconds: end of the last packet


def open_video(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise VideoDecodeError(f"{path}: video file not found")
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError) as error:
        raise VideoDecodeError(f"{path}: cannot open the video ({error})") from None


def first_video_stream(container: av.container.InputContainer, path: Path, threads: int) -> av.VideoStream:
    if not container.streams.video:
        raise VideoDecodeError(f"{path}: no video stream in the file")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    stream.thread_count = max(0, threads)
    return stream


def stream_timing(container: av.container.InputContainer, stream: av.VideoStream) -> Timing:
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
    return Timing(time_base, stream.start_time or 0, fps, claimed)


def _tag_seconds(value: str | None) -> float | None:
    """'HH:MM:SS.fraction' -> seconds; None when absent or malformed."""
    try:
        hours, minutes, seconds = str(value).split(":")
        total = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None
    return total if total > 0 else None


def decoded_frames(
    container: av.container.InputContainer, stream: av.VideoStream, timing: Timing, path: Path,
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


def scan_packets(
    container: av.container.InputContainer, stream: av.VideoStream, timing: Timing, path: Path
) -> PacketIndex:
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
    check_end(path, end, timing, needed=None)
    seek(container, stream, timing, 0.0, path)  # back to the start for the decoding
    return PacketIndex(np.unique(np.asarray(keyframes)), end)


def check_end(path: Path, end: float, timing: Timing, needed: float | None) -> None:
    """Raise when the data stops well before the header's duration (a truncated file)
    and, when `needed` is given, before that time."""
    if timing.claimed is None:
        return
    tolerance = max(0.5, 0.02 * timing.claimed, 3 * timing.period)
    if end < timing.claimed - tolerance and (needed is None or needed > end + timing.period):
        raise VideoDecodeError(
            f"{path}: truncated: the video data ends at {end:.2f} s but the file "
            f"header says {timing.claimed:.2f} s")


def seek(
    container: av.container.InputContainer, stream: av.VideoStream, timing: Timing,
    time: float, path: Path,
) -> None:
    """Move the demuxer to the keyframe at or before `time` (seconds from the start)."""
    offset = timing.start + round(Fraction(time) / timing.time_base)
    try:
        container.seek(offset, stream=stream, backward=True, any_frame=False)
    except av.FFmpegError as error:
        raise VideoDecodeError(f"{path}: seek to {time:.2f} s failed ({error})") from None
