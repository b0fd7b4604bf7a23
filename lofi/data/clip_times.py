"""Which moments of a video make a clip, and how to decode them cheaply. Pure functions,
no I/O: everything is in seconds so that variable-frame-rate videos work the same.

Snippets (LoFi, NeurIPS 2021, Sec. 3 / PAPER.md "Input"): a video becomes TR snippets;
a snippet is 64 consecutive frames subsampled at stride 8, i.e. F = 8 frames. The stride
is an option (`STRIDE` is the paper's 8): a low-rate video (e.g. the 8 fps synthetic
set) takes a smaller one so that a snippet spans about a second, not 8 s. Snippet
centres are spread uniformly over the duration (the TAL convention of rescaling every
video to TR snippets, G-TAD/BMN). Windows near the ends are shifted inside the video,
not cut. A video with fewer frames than one window (stride x F) is sampled uniformly:
TR x F instants evenly spread over the duration, so frames repeat.

Decoding plan: targets are decoded in time order; a seek to a keyframe is worth it only
when that keyframe lies well past the current decoding position (then every frame in
between is skipped). With dense sampling no keyframe falls inside the small gaps and the
whole video is decoded once, in order.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np

from lofi.errors import OptionError

STRIDE = 8  # source frames between the sampled frames of a snippet (64 frames -> 8)
DEFAULT_FPS = 30.0  # used only when neither the media nor the annotation gives a rate
MIN_SKIP_FRAMES = 12  # a seek must skip at least this many frames to pay for itself


def check_stride(stride: int) -> int:
    """`stride` when it is a whole number >= 1; else OptionError naming the value."""
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise OptionError(f"snippet stride must be a whole number of frames >= 1, got {stride!r}")
    return int(stride)


def frame_count(duration: float, fps: float) -> int:
    """Frames on the grid 0, 1/fps, ... that start before `duration` (at least 1)."""
    if not duration > 0 or not fps > 0:
        raise ValueError(f"duration and fps must be positive, got {duration} and {fps}")
    return max(1, math.ceil(duration * fps - 1e-6))


def is_short(duration: float, fps: float, frames_per_snippet: int, stride: int = STRIDE) -> bool:
    """True when the video holds fewer frames than one snippet window (stride x F)."""
    return frame_count(duration, fps) < stride * frames_per_snippet


def snippet_times(
    duration: float, fps: float, tr: int, frames_per_snippet: int, stride: int = STRIDE
) -> np.ndarray:
    """Target times in seconds, (TR, F) float64: increasing along F, and snippet starts
    non-decreasing along TR (windows of neighbouring snippets may overlap).

    Long videos: snippet i is centred at c_i = (i + 0.5) * N / TR in frame units (N
    frames in total) and takes frames floor(c_i - (F - 1) * stride / 2) + k * stride,
    k < F, with the window shifted inside [0, N). Frame k starts at k / fps.
    Short videos (N < stride * F): TR * F instants at the centres of equal slices of
    the duration."""
    if tr < 1 or frames_per_snippet < 1 or stride < 1:
        raise ValueError(f"tr, frames_per_snippet and stride must be >= 1, got {tr}, "
                         f"{frames_per_snippet}, {stride}")
    n = frame_count(duration, fps)
    f = frames_per_snippet
    if n < stride * f:
        slots = np.arange(tr * f, dtype=np.float64)  # (TR*F,)
        return ((slots + 0.5) * (duration / (tr * f))).reshape(tr, f)
    span = (f - 1) * stride  # frames from the first to the last sample of a window
    centres = (np.arange(tr, dtype=np.float64) + 0.5) * (n / tr)  # (TR,) in frames
    # samples symmetric about the centre; frame k covers [k, k + 1) in frame units
    starts = np.floor(centres - span / 2.0).astype(np.int64)
    starts = np.clip(starts, 0, n - 1 - span)  # (TR,)
    index = starts[:, None] + stride * np.arange(f, dtype=np.int64)[None, :]  # (TR, F)
    return index / float(fps)


def nearest_frames(targets: np.ndarray, frame_times: np.ndarray) -> np.ndarray:
    """For each target time, the index of the frame nearest in time (ties go to the
    earlier frame); `frame_times` must be non-decreasing. Same shape as `targets`."""
    times = np.asarray(frame_times, dtype=np.float64)
    if times.ndim != 1 or times.size == 0:
        raise ValueError("frame_times must be a non-empty 1-D array")
    midpoints = (times[1:] + times[:-1]) / 2.0  # (N-1,) boundaries between frames
    return np.searchsorted(midpoints, np.asarray(targets, dtype=np.float64), side="left")


class TimestampGuesser:
    """Pick pts or dts for decoded frames, whichever has been monotonic more often: the
    heuristic of FFmpeg's `guess_correct_pts` (libavcodec/decode.c)."""

    def __init__(self) -> None:
        self.faulty_pts = self.faulty_dts = 0
        self.last_pts: int | None = None
        self.last_dts: int | None = None

    def __call__(self, pts: int | None, dts: int | None) -> int | None:
        if dts is not None:
            self.faulty_dts += self.last_dts is not None and dts <= self.last_dts
            self.last_dts = dts
        if pts is not None:
            self.faulty_pts += self.last_pts is not None and pts <= self.last_pts
            self.last_pts = pts
        if pts is not None and (self.faulty_pts <= self.faulty_dts or dts is None):
            return pts
        return dts


def near_any(time: float, targets: list[float], margin: float) -> bool:
    """True when a target lies within `margin` seconds of `time`; `targets` sorted."""
    index = bisect.bisect_left(targets, time - margin)
    return index < len(targets) and targets[index] <= time + margin


@dataclass(frozen=True)
class Run:
    """Decode from `seek` (a keyframe time; None: continue from where decoding is) up to
    and including the target `last` (an index into the sorted unique targets)."""

    seek: float | None
    first: int
    last: int


def plan_runs(
    targets: np.ndarray,
    keyframes: np.ndarray,
    frame_period: float,
    min_skip_frames: int = MIN_SKIP_FRAMES,
) -> list[Run]:
    """Split sorted unique target times into runs decoded without a seek.

    targets: sorted unique seconds; keyframes: sorted keyframe times (seconds) from the
    container; frame_period: 1 / fps. A new run (seek) starts at target t when the last
    keyframe at or before t - frame_period (the nearest frame to t may be one before it)
    is more than `min_skip_frames` frames past the point decoding has reached. The first
    run seeks only if that skips frames at the start. Dense sampling gives one run."""
    targets = np.asarray(targets, dtype=np.float64)
    keyframes = np.asarray(keyframes, dtype=np.float64)
    if targets.size == 0:
        return []
    if keyframes.size == 0:
        return [Run(None, 0, targets.size - 1)]
    min_skip = min_skip_frames * frame_period
    needed = np.searchsorted(keyframes, targets - frame_period, side="right") - 1
    needed_time = keyframes[np.clip(needed, 0, None)]  # (T,) keyframe to start from
    runs: list[Run] = []
    reached = 0.0  # decoding position (seconds) when nothing has been decoded yet
    first = 0
    seek: float | None = None
    for index, target in enumerate(targets):
        if needed_time[index] > reached + min_skip:
            if index > first:
                runs.append(Run(seek, first, index - 1))
            seek, first = float(needed_time[index]), index
        reached = max(reached, float(target))
    runs.append(Run(seek, first, targets.size - 1))
    return runs


def decoded_fraction(runs: list[Run], targets: np.ndarray, duration: float) -> float:
    """Estimated fraction of the video that the plan decodes (1.0 for one dense run)."""
    if duration <= 0 or not runs:
        return 0.0
    targets = np.asarray(targets, dtype=np.float64)
    total = 0.0
    for run in runs:
        begin = 0.0 if run.seek is None else run.seek
        total += max(0.0, float(targets[run.last]) - begin)
    return min(1.0, total / duration)
