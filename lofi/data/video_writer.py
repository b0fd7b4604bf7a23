"""Write a stack of RGB frames as a real H.264 video file (PyAV), atomically and
deterministically.

Encoder: the PyAV 18 wheels bundle FFmpeg with libx264 (`"libx264" in
av.codecs_available`); `"h264"` is FFmpeg's alias for the same encoder. If a PyAV build
lacks libx264, `codec="mpeg4"` (MPEG-4 part 2, always built in) is the fallback that
every decoder reads; `default_codec()` picks it.

Determinism: the encoder runs single-threaded (`threads=1`: x264's frame threads would
otherwise let the rate control see frames in a scheduler-dependent order), without
x264's macroblock-tree rate control (`no-mbtree`: with it, about one video in ten of
the synthetic set encoded differently from run to run, even single-threaded) and with
explicit scene-cut control (see `keyframe_interval`); the muxer gets the `bitexact`
flag. So the same frames give the same file bytes with the same FFmpeg build, and the
same decoded frames with the same decoder.

Atomicity: the file is written to a hidden temporary name in the destination folder,
fsynced, then `os.replace`d over `path`; a failure removes the temporary file and
leaves any previous `path` untouched.
"""

from __future__ import annotations

import os
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from planner.atomic_files import honour_umask

# File suffix -> FFmpeg muxer name.
CONTAINERS: dict[str, str] = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}
# Encoders that take x264's private options.
_X264_NAMES = ("libx264", "h264")
_AUDIO_RATE = 16_000  # Hz, the silent track written when audio=True


def default_codec() -> str:
    """libx264 when the installed FFmpeg has it, else MPEG-4 part 2."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float,
    *,
    codec: str | None = None,
    crf: int = 23,
    preset: str = "medium",
    keyframe_interval: int | None = None,
    audio: bool = False,
) -> Path:
    """Encode `frames` (N, H, W, 3) uint8 RGB at `fps` frames per second into `path`.

    codec: None (= `default_codec()`), "libx264"/"h264" (H.264, yuv420p, constant
      quality `crf`, x264 `preset`) or "mpeg4" (quality from `crf` mapped to qscale).
      H and W must be even (yuv420p).
    keyframe_interval: a keyframe exactly every this many frames (x264: `keyint`,
      `min-keyint`, `no-scenecut`); None leaves the encoder's default.
    audio: also write a silent mono AAC track of the same duration, for tests of
      readers that must pick the video stream.
    Returns the written path. Frame i has presentation time i / fps.
    """
    path = Path(path)
    _check_frames(frames, path)
    if not fps > 0:
        raise ValueError(f"{path}: fps must be positive, got {fps}")
    if keyframe_interval is not None and keyframe_interval < 1:
        raise ValueError(f"{path}: keyframe_interval must be >= 1, got {keyframe_interval}")
    codec = default_codec() if codec is None else codec
    if not _has_encoder(codec):
        raise ValueError(f"{path}: this FFmpeg build has no {codec!r} encoder; try {default_codec()!r}")
    muxer = CONTAINERS.get(path.suffix.lower())
    if muxer is None:
        raise ValueError(f"{path}: unsupported suffix {path.suffix!r}; use one of {sorted(CONTAINERS)}")

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temp = Path(name)
    try:
        _encode(temp, muxer, frames, Fraction(fps).limit_denominator(1001), codec, crf,
                preset, keyframe_interval, audio)
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        honour_umask(temp)  # mkstemp made it 0600
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()
    return path


def _has_encoder(codec: str) -> bool:
    try:
        av.codec.Codec(codec, "w")
    except (ValueError, av.FFmpegError):
        return False
    return True


def _check_frames(frames: np.ndarray, path: Path) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 \
            or frames.shape[-1] != 3:
        shape = getattr(frames, "shape", None)
        dtype = getattr(frames, "dtype", type(frames).__name__)
        raise ValueError(f"{path}: frames must be a (N, H, W, 3) uint8 array, got {shape} {dtype}")
    n, h, w, _ = frames.shape
    if n == 0:
        raise ValueError(f"{path}: no frames to write")
    if h % 2 or w % 2 or h < 2 or w < 2:
        raise ValueError(f"{path}: frame height and width must be even (yuv420p), got {h}x{w}")


def _encode(
    temp: Path,
    muxer: str,
    frames: np.ndarray,  # (N, H, W, 3) uint8
    rate: Fraction,
    codec: str,
    crf: int,
    preset: str,
    keyframe_interval: int | None,
    audio: bool,
) -> None:
    n, h, w, _ = frames.shape
    with av.open(str(temp), "w", format=muxer, options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=rate, options=_codec_options(
            codec, crf, preset, keyframe_interval))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.time_base = 1 / rate
        stream.codec_context.thread_count = 1
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        if codec == "mpeg4":
            stream.codec_context.flags |= av.codec.context.Flags.qscale
            stream.codec_context.global_quality = max(1, min(31, crf // 3)) * 118  # FF_QP2LAMBDA
            if keyframe_interval is not None:
                stream.codec_context.gop_size = keyframe_interval
        audio_stream = container.add_stream("aac", rate=_AUDIO_RATE, layout="mono") if audio else None

        for index in range(n):
            frame = av.VideoFrame.from_ndarray(frames[index], format="rgb24")
            frame.pts, frame.time_base = index, 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))

        if audio_stream is not None:
            _write_silence(container, audio_stream, int(round(n / rate * _AUDIO_RATE)))


def _codec_options(codec: str, crf: int, preset: str, keyframe_interval: int | None) -> dict[str, str]:
    if codec not in _X264_NAMES:
        return {"threads": "1"}
    # "no-mbtree": with x264's macroblock-tree rate control the same frames gave
    # different files from run to run (PyAV 18.1 wheels; about one video in ten).
    params = ["threads=1", "no-mbtree=1"]
    if keyframe_interval is not None:
        # "no-scenecut": otherwise x264 adds keyframes at scene cuts (and moves the
        # regular ones), so keyframes would not fall exactly every `keyframe_interval`.
        params += [f"keyint={keyframe_interval}", f"min-keyint={keyframe_interval}", "no-scenecut=1"]
    return {"crf": str(crf), "preset": preset, "threads": "1", "x264-params": ":".join(params)}


def _write_silence(container: av.container.OutputContainer, stream: av.AudioStream, samples: int) -> None:
    chunk = 1024  # AAC frame size
    for start in range(0, max(samples, 1), chunk):
        count = min(chunk, max(samples, 1) - start)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, count), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = _AUDIO_RATE, start
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
