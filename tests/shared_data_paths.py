"""Where the real data made by others lives: ../shared/data next to the repository
(see its README.md for the sources). Tests that need it skip when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
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
    """`path`, or skip the test when the shared data is not there."""
    if not path.exists():
        pytest.skip(f"shared data not found: {path}")
    return path
