"""Small real media files for the data-path tests.

Frame i of an "indexed" video is one flat colour that encodes i (red = 8 * (i % 32),
green = 8 * (i // 32)), which survives H.264 and JPEG compression, so a test can read
back which source frame a decoded image came from. Plain videos are written by
lofi.data.video_writer; the special files (variable frame rate, header at the front,
audio only, truncated, corrupt) are written here with PyAV directly.
"""

from __future__ import annotations

import shutil
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from torchvision.io import encode_jpeg, write_file

from lofi.data.video_writer import write_video

MAX_INDEX = 32 * 32 - 1


def indexed_frames(n: int, height: int = 48, width: int = 64) -> np.ndarray:
    """(N, H, W, 3) uint8, frame i a flat colour encoding i."""
    if n > MAX_INDEX + 1:
        raise ValueError(f"at most {MAX_INDEX + 1} indexed frames")
    index = np.arange(n)
    colours = np.stack([8 * (index % 32), 8 * (index // 32), np.full(n, 128)], axis=-1)  # (N, 3)
    return np.broadcast_to(colours[:, None, None, :], (n, height, width, 3)).astype(np.uint8)


def frame_index(image: torch.Tensor | np.ndarray) -> int:
    """The index encoded in a decoded (3, H, W) image."""
    array = torch.as_tensor(image).float()
    red, green = float(array[0].mean()), float(array[1].mean())
    return int(round(red / 8)) + 32 * int(round(green / 8))


def clip_indices(clip: torch.Tensor) -> np.ndarray:
    """(TR, F, 3, S, S) clip -> (TR, F) source frame indices."""
    tr, f = clip.shape[:2]
    return np.array([[frame_index(clip[i, k]) for k in range(f)] for i in range(tr)])


def write_indexed_video(path: Path, n: int, fps: float, **options) -> Path:
    """An indexed H.264 video with B-frames (x264 `veryfast`); options go to
    write_video (keyframe_interval, audio, ...)."""
    return write_video(path, indexed_frames(n), fps, crf=10, preset="veryfast", **options)


def write_vfr_video(path: Path, times: list[float], height: int = 48, width: int = 64,
                    preset: str = "ultrafast") -> Path:
    """Indexed frames shown at the given times (seconds, increasing): variable rate.
    x264 `ultrafast` writes no B-frames; `veryfast` does."""
    frames = indexed_frames(len(times), height, width)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30, options={"crf": "10", "preset": preset})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, 1000)
        stream.codec_context.time_base = Fraction(1, 1000)
        for image, time in zip(frames, times):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = int(round(time * 1000)), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_webm_video(path: Path, n: int, fps: int) -> Path:
    """An indexed VP9 .webm (libvpx, realtime settings)."""
    with av.open(str(path), "w", format="webm") as container:
        stream = container.add_stream("libvpx-vp9", rate=fps, options={
            "deadline": "realtime", "cpu-used": "8", "crf": "10", "b": "0"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index, image in enumerate(indexed_frames(n)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_faststart_video(path: Path, n: int, fps: int) -> Path:
    """An indexed mp4 with its index (moov) at the front, as web videos are: cutting
    the file keeps a header that promises more data than is there."""
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "10", "preset": "ultrafast",
                                                                    "x264-params": "keyint=10"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index, image in enumerate(indexed_frames(n)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_audio_only(path: Path, seconds: float = 1.0) -> Path:
    """An .mp4 with one silent AAC stream and no video."""
    rate = 16_000
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate, layout="mono")
        samples = int(seconds * rate)
        for start in range(0, samples, 1024):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def truncated_copy(source: Path, target: Path, fraction: float) -> Path:
    """The first `fraction` of the bytes of `source`."""
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def garbage_file(target: Path, size: int = 4096) -> Path:
    target.write_bytes(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    return target


def write_frame_folder(folder: Path, n: int, height: int = 48, width: int = 64) -> Path:
    """`folder/img_00001.jpg` ... of indexed frames (JPEG quality 95)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(indexed_frames(n, height, width), start=1):
        chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # (3, H, W)
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs
            warnings.simplefilter("ignore", DeprecationWarning)
            write_file(str(folder / f"img_{index:05d}.jpg"), encode_jpeg(chw, quality=95))
    return folder


def copy_to(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target
