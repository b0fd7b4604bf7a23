"""What the synthetic dataset holds, before any file is written: its config, which video
is which (id, class, subset, length, action instances) and the ground-truth and
classification documents. Pure functions of `SynthConfig`: video i uses its own random
stream (seed, i), so the same seed gives the same dataset. What the classes look like is
in `scenes`; writing the files is `files`."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from lofi.data.synth.scenes import class_heading
from lofi.errors import OptionError

GENERATOR_VERSION = 1  # bump when the output for a given config changes
MIN_INSTANCE_SECONDS = 3.0
MIN_GAP_SECONDS = 1.0
COVERAGE = (0.2, 0.8)  # fraction of a video covered by its instances
LENGTH_CONCENTRATION = 1.0  # Dirichlet alpha of instance lengths (1: uniform shares)
SCORE_MARGIN = 2.5  # classification logit of the true class over N(0, 1) noise
_COMPASS = {0: "right", 45: "up_right", 90: "up", 135: "up_left"}


@dataclass(frozen=True)
class SynthConfig:
    videos: int = 120
    classes: int = 4
    seed: int = 0
    size: int = 64  # frame width = height, pixels
    fps: float = 8.0
    min_duration: float = 16.0  # seconds
    max_duration: float = 48.0  # seconds
    max_instances: int = 4  # per video
    train_fraction: float = 0.75
    crf: int = 23  # x264 constant quality

    def validate(self) -> SynthConfig:
        """Raise OptionError naming the field and value when the config cannot work."""
        for name in ("videos", "classes", "seed", "size", "max_instances", "crf"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise OptionError(f"synthetic data: {name}={value!r} must be an integer")
        for name in ("fps", "min_duration", "max_duration", "train_fraction"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise OptionError(f"synthetic data: {name}={value!r} must be a number")
        checks = [
            ("videos", 2 <= self.videos <= 100_000, "an integer from 2 to 100000"),
            ("classes", 2 <= self.classes <= 6, "from 2 to 6 (headings at least 30 deg apart)"),
            ("size", 16 <= self.size <= 512 and self.size % 2 == 0,
             "an even number of pixels from 16 to 512 (H.264 4:2:0 needs even sizes)"),
            ("fps", 4 <= self.fps <= 60, "from 4 to 60 frames per second"),
            ("min_duration", 4 <= self.min_duration <= 3600, "from 4 to 3600 seconds"),
            ("max_duration", self.min_duration <= self.max_duration <= 3600,
             f"from min_duration ({self.min_duration}) to 3600 seconds"),
            ("max_instances", 1 <= self.max_instances <= 16, "from 1 to 16"),
            ("train_fraction", 0 < self.train_fraction < 1, "strictly between 0 and 1"),
            ("crf", 0 <= self.crf <= 51, "from 0 to 51"),
            ("seed", 0 <= self.seed < 2**63, "a non-negative integer"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise OptionError(f"synthetic data: {name}={getattr(self, name)!r} must be {expected}")
        return self

    def class_names(self) -> tuple[str, ...]:
        return tuple(class_name(index, self.classes) for index in range(self.classes))

    def cache_key(self) -> str:
        """Short hash of the config and generator version: the cache folder name."""
        text = json.dumps({"generator": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SynthVideo:
    video_id: str
    index: int  # position in the dataset; picks the random stream
    subset: str  # "training" | "validation"
    class_index: int
    frames: int
    segments: tuple[tuple[int, int], ...]  # [start, end) frame ranges, sorted, disjoint


def class_name(index: int, classes: int) -> str:
    """Name of class `index`: the direction it slides in (`scenes.class_heading`,
    0 = right, counter-clockwise over half a turn), e.g. "slide_up" or "slide_060deg"."""
    degrees = round(math.degrees(class_heading(index, classes)), 6)
    if degrees == int(degrees) and int(degrees) in _COMPASS:
        return f"slide_{_COMPASS[int(degrees)]}"
    return f"slide_{round(degrees):03d}deg"


def video_rng(config: SynthConfig, index: int, purpose: str) -> np.random.Generator:
    """The random stream of video `index` for its "layout" (length, instances) or its
    "scene" (what is drawn); independent streams, so changing one leaves the other."""
    return np.random.default_rng([config.seed, {"layout": 1, "scene": 3}[purpose], index])


def plan_dataset(config: SynthConfig) -> tuple[SynthVideo, ...]:
    """Which video is which: ids, classes (balanced), subsets (stratified by class),
    lengths and action instances. Pure."""
    config.validate()
    rng = np.random.default_rng([config.seed, 0])
    classes = rng.permutation(np.arange(config.videos) % config.classes)  # (V,)
    validation = _validation_set(classes, config)
    width = max(4, len(str(config.videos)))
    videos = []
    for index in range(config.videos):
        stream = video_rng(config, index, "layout")
        seconds = stream.uniform(config.min_duration, config.max_duration)
        frames = max(2, int(round(seconds * config.fps)))
        videos.append(SynthVideo(
            video_id=f"synth_{index + 1:0{width}d}", index=index,
            subset="validation" if index in validation else "training",
            class_index=int(classes[index]), frames=frames,
            segments=sample_segments(stream, frames, config.fps, config.max_instances)))
    return tuple(videos)


def _validation_set(classes: np.ndarray, config: SynthConfig) -> set[int]:
    """Indices of validation videos: dealt round-robin over the classes (videos of a
    class in a seeded order), so validation covers the classes evenly; with at least
    as many validation videos as classes, every class is in it."""
    count = min(len(classes) - 1, max(1, round(len(classes) * (1 - config.train_fraction))))
    rank = np.zeros(len(classes), dtype=int)  # position of a video within its class
    seen: dict[int, int] = {}
    shuffled = np.random.default_rng([config.seed, 4]).permutation(len(classes))
    for index in shuffled:
        label = classes[index]
        rank[index] = seen.get(int(label), 0)
        seen[int(label)] = rank[index] + 1
    order = sorted(range(len(classes)), key=lambda i: (rank[i], classes[i]))  # round-robin
    return set(order[:count])


def sample_segments(
    rng: np.random.Generator, frames: int, fps: float, max_instances: int,
) -> tuple[tuple[int, int], ...]:
    """1..max_instances disjoint [start, end) frame ranges of widely varying length
    (Dirichlet split of a random coverage), at least MIN_INSTANCE_SECONDS long (or the
    whole video, if shorter) and MIN_GAP_SECONDS apart; fewer instances when the video
    is too short for them."""
    min_len = min(frames, max(2, round(MIN_INSTANCE_SECONDS * fps)))
    min_gap = max(1, round(MIN_GAP_SECONDS * fps))
    count = int(rng.integers(1, max_instances + 1))
    while count > 1 and count * min_len + (count - 1) * min_gap > COVERAGE[1] * frames:
        count -= 1
    covered = int(round(rng.uniform(*COVERAGE) * frames))
    covered = min(max(covered, count * min_len), frames - (count - 1) * min_gap)
    lengths = _split(rng, covered, count, min_len, LENGTH_CONCENTRATION)
    gaps = _split(rng, frames - covered - (count - 1) * min_gap, count + 1, 0, 1.0)
    gaps[1:-1] += min_gap
    segments, cursor = [], 0
    for length, gap in zip(lengths, gaps[:-1]):
        cursor += int(gap)
        segments.append((cursor, cursor + int(length)))
        cursor += int(length)
    return tuple(segments)


def _split(rng: np.random.Generator, total: int, parts: int, minimum: int, alpha: float) -> np.ndarray:
    """`parts` integers >= minimum summing to `total` (Dirichlet(alpha) shares)."""
    extra = total - parts * minimum
    raw = rng.dirichlet([alpha] * parts) * extra
    out = np.floor(raw).astype(int)
    leftover = extra - int(out.sum())
    out[np.argsort(out - raw)[:leftover]] += 1  # largest fractional parts first
    return out + minimum


def action_mask(video: SynthVideo) -> np.ndarray:
    """(N,) bool: frames inside an action instance."""
    mask = np.zeros(video.frames, dtype=bool)
    for start, end in video.segments:
        mask[start:end] = True
    return mask


def annotation_document(videos: tuple[SynthVideo, ...], config: SynthConfig) -> dict:
    """The ground truth in the ActivityNet-1.3 format (segments in seconds: instance
    [a, b) covers frame a's start a/fps to frame b-1's end b/fps)."""
    names = config.class_names()
    taxonomy = [{"nodeId": 0, "nodeName": "Root", "parentId": None, "parentName": None}]
    taxonomy += [{"nodeId": i + 1, "nodeName": name, "parentId": 0, "parentName": "Root"}
                 for i, name in enumerate(names)]
    database = {}
    for video in videos:
        database[video.video_id] = {
            "subset": video.subset,
            "duration": round(video.frames / config.fps, 6),
            "resolution": f"{config.size}x{config.size}",
            "url": "",
            "annotations": [
                {"segment": [round(a / config.fps, 6), round(b / config.fps, 6)],
                 "label": names[video.class_index]}
                for a, b in video.segments],
        }
    return {"version": "VERSION 1.3", "taxonomy": taxonomy, "database": database}


def classification_document(videos: tuple[SynthVideo, ...], config: SynthConfig) -> dict:
    """Video-level class scores: softmax(SCORE_MARGIN * one_hot(true class) + N(0, 1)),
    so the top-1 class is right most of the time but not always."""
    rng = np.random.default_rng([config.seed, 2])
    logits = rng.normal(size=(len(videos), config.classes))  # (V, K)
    logits[np.arange(len(videos)), [v.class_index for v in videos]] += SCORE_MARGIN
    scores = np.exp(logits - logits.max(axis=1, keepdims=True))
    scores /= scores.sum(axis=1, keepdims=True)
    return {"results": {v.video_id: [round(float(s), 6) for s in row]
                        for v, row in zip(videos, scores)},
            "class": list(config.class_names())}
