"""The shared real data (../shared/data next to the repository; its README.md names the
sources): where the files are, a skip when one is absent, and predictions derived from the
ActivityNet-1.3 ground truth by fixed arithmetic (no random generator, so they are the same
on every machine and numpy version).

Tests skip only when the shared file is genuinely absent; CI runs with ../shared present.
The fixture generator (fixtures/evaluation/make_expected.py) uses the same recipes, so
this module does not import pytest until a test asks for a skip.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REPO_ROOT = REPO  # the name the data tests used
SHARED_DATA = REPO.parent / "shared" / "data"
ACTIVITYNET_GT = SHARED_DATA / "activitynet" / "activitynet13_gt.json"
SHARED_VIDEOS = SHARED_DATA / "videos"

# file name -> (frames, fps, width, height, has audio), from shared/data/README.md
REAL_VIDEOS: dict[str, tuple[int, float, int, int, bool]] = {
    "mmaction2_test.mp4": (300, 30.0, 340, 256, False),
    "mmaction2_test.avi": (164, 25.0, 320, 240, True),
    "mmaction2_rawvideo_dataset_part_0.mp4": (32, 30.0, 340, 256, False),
    "bbformer_tennis26.mp4": (339, 30.09, 320, 180, True),
}


def require(path: Path) -> Path:
    """`path`, or skip the calling test when that shared file is absent."""
    if not path.exists():
        import pytest

        pytest.skip(f"shared data not found: {path}")
    return path


def require_activitynet_gt() -> Path:
    """The shared ground truth, or skip the calling test if the file is absent."""
    return require(ACTIVITYNET_GT)


@lru_cache(maxsize=1)
def activitynet_gt(path: str | None = None) -> dict:
    with open(path or ACTIVITYNET_GT, encoding="utf-8") as handle:
        return json.load(handle)


def _subset_videos(gt: dict, subset: str) -> list[tuple[str, dict]]:
    return [(vid, v) for vid, v in gt["database"].items() if v["subset"] == subset]


def _classes(videos: list[tuple[str, dict]]) -> list[str]:
    seen: dict[str, None] = {}
    for _, v in videos:
        for annotation in v["annotations"]:
            seen.setdefault(annotation["label"], None)
    return list(seen)


def derived_predictions(gt: dict, recipe: str, subset: str = "validation") -> dict:
    """A results file (official format) derived from the ground truth of `subset`.

    recipes:
      perfect     every annotated segment, with its label, distinct scores
      shifted     every segment moved by -50 % .. +50 % of its length (fixed pattern),
                  scores spread over (0, 1), plus two wrong-class or badly placed
                  detections per video
      proposals   class-agnostic: per segment four proposals (exact, shifted by 10 %,
                  30 % and 60 % of its length) and three spans per video, distinct scores
                  inside each video
    """
    videos = _subset_videos(gt, subset)
    classes = _classes(videos)
    n_segments = sum(len(v["annotations"]) for _, v in videos)
    results: dict[str, list[dict]] = {}
    i = 0  # running index of the segment over the subset, file order
    for j, (vid, video) in enumerate(videos):
        entries: list[dict] = []
        duration = float(video.get("duration", 100.0))
        for annotation in video["annotations"]:
            s, e = annotation["segment"]
            length = e - s
            label = annotation["label"]
            rank_score = ((i * 7919) % n_segments + 1) / (n_segments + 1)
            if recipe == "perfect":
                entries.append({"label": label, "score": rank_score, "segment": [s, e]})
            elif recipe == "shifted":
                shift = ((i * 7919) % 41 - 20) / 40 * length
                entries.append({"label": label, "score": rank_score, "segment": [s + shift, e + shift]})
            elif recipe == "proposals":
                for k, fraction in enumerate((0.0, 0.1, 0.3, 0.6)):
                    sign = 1 if (i + k) % 2 else -1
                    shift = sign * fraction * length
                    score = 0.9 - 0.2 * k + ((i * 7919) % 997) / 997 * 0.1
                    entries.append({"score": score, "segment": [s + shift, e + shift]})
            else:
                raise ValueError(f"unknown recipe {recipe!r}")
            i += 1
        if recipe == "shifted":
            wrong = classes[(j * 31) % len(classes)]
            entries.append(
                {"label": wrong, "score": (j + 0.25) / (len(videos) + 1) * 0.999,
                 "segment": [0.2 * duration, 0.6 * duration]}
            )
            entries.append(
                {"label": entries[0]["label"] if video["annotations"] else wrong,
                 "score": (j + 0.75) / (len(videos) + 1) * 0.997,
                 "segment": [0.05 * duration, 0.15 * duration]}
            )
        if recipe == "proposals":
            for k, (a, b) in enumerate(((0.0, 1.0), (0.25, 0.75), (0.5, 0.9))):
                entries.append({"score": 0.05 + 0.01 * k + j * 1e-7, "segment": [a * duration, b * duration]})
        results[vid] = entries
    return {"version": "VERSION 1.3", "results": results, "external_data": {}}
