"""The synthetic dataset on disk: writing it (`generate`), reading back what a folder
holds (`read_manifest`, `describe`) and the cached copy that training uses
(`ensure_synthetic`). The folder's layout is in the package's docstring."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from lofi.data.synth.layout import (
    GENERATOR_VERSION,
    SynthConfig,
    action_mask,
    annotation_document,
    classification_document,
    plan_dataset,
    video_rng,
)
from lofi.errors import InputFileError, OptionError
from planner.atomic_files import atomic_write_json

KEYFRAME_SECONDS = 4.0  # a keyframe this often, for seeking readers

Progress = Callable[[int, int], None]  # (videos done, videos in all)


@dataclass(frozen=True)
class SynthPaths:
    root: Path
    videos_dir: Path
    annotations: Path
    classification: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @classmethod
    def under(cls, root: str | os.PathLike) -> SynthPaths:
        root = Path(root)
        return cls(root, root / "videos", root / "annotations.json", root / "classification.json")


def generate(out_dir: str | os.PathLike, config: SynthConfig, progress: Progress | None = None,
             *, overwrite: bool = False) -> SynthPaths:
    """Write the dataset into `out_dir` (created if missing). A non-empty `out_dir` is
    an OptionError unless `overwrite`; then the videos that a previous synthetic dataset
    there listed are removed first. manifest.json is written last. `progress(done,
    total)` is called after each video."""
    from lofi.data.synth.scenes import plan_scene, render
    from lofi.data.video_writer import write_video  # imports av

    config.validate()
    paths = SynthPaths.under(out_dir)
    _prepare(paths, overwrite)
    videos = plan_dataset(config)
    for done, video in enumerate(videos, start=1):
        scene = plan_scene(video_rng(config, video.index, "scene"), video.frames, config.fps,
                           action_mask(video), video.class_index, config.classes)
        write_video(paths.videos_dir / f"{video.video_id}.mp4", render(scene, config.size),
                    config.fps, crf=config.crf, preset="veryfast",
                    keyframe_interval=max(1, round(KEYFRAME_SECONDS * config.fps)))
        if progress is not None:
            progress(done, len(videos))
    atomic_write_json(paths.annotations, annotation_document(videos, config))
    atomic_write_json(paths.classification, classification_document(videos, config))
    atomic_write_json(paths.manifest, {
        "format": "lofi-synth", "generator": GENERATOR_VERSION, "config": asdict(config),
        "videos": [v.video_id for v in videos], "classes": list(config.class_names())})
    return paths


def _prepare(paths: SynthPaths, overwrite: bool) -> None:
    root = paths.root
    if root.exists() and not root.is_dir():
        raise OptionError(f"{root} exists and is not a folder")
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise OptionError(f"{root} is not empty; choose an empty folder or overwrite it (--force)")
        previous = read_manifest(root) if paths.manifest.exists() else None
        paths.manifest.unlink(missing_ok=True)  # no longer a complete dataset
        for video_id in (previous or {}).get("videos", []):
            (paths.videos_dir / f"{video_id}.mp4").unlink(missing_ok=True)
    paths.videos_dir.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class SynthSummary:
    videos: int
    training: int
    validation: int
    classes: tuple[str, ...]
    instances: int
    frames: int
    seconds: float
    action_fraction: float  # share of all video time inside an instance
    bytes: int  # all files of the dataset


def describe(paths: SynthPaths) -> SynthSummary:
    """Numbers about a written dataset, read back from its files."""
    manifest = read_manifest(paths.root)
    config = config_from_manifest(manifest)
    try:
        database = json.loads(paths.annotations.read_text(encoding="utf-8"))["database"]
    except (OSError, ValueError, KeyError) as error:
        raise InputFileError(f"{paths.annotations}: cannot read ({error})") from error
    seconds = sum(entry["duration"] for entry in database.values())
    covered = sum(b - a for entry in database.values() for a, b in
                  (item["segment"] for item in entry["annotations"]))
    subsets = [entry["subset"] for entry in database.values()]
    files = [p for p in paths.root.rglob("*") if p.is_file()]
    return SynthSummary(
        videos=len(database), training=subsets.count("training"),
        validation=subsets.count("validation"), classes=tuple(manifest["classes"]),
        instances=sum(len(entry["annotations"]) for entry in database.values()),
        frames=int(round(seconds * config.fps)), seconds=seconds,
        action_fraction=covered / seconds if seconds else 0.0,
        bytes=sum(p.stat().st_size for p in files))


def read_manifest(root: str | os.PathLike) -> dict:
    """The manifest of a synthetic dataset folder; InputFileError if unreadable."""
    path = Path(root) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputFileError(f"{path}: cannot read the synthetic dataset manifest ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != "lofi-synth":
        raise InputFileError(f"{path}: not a lofi synthetic dataset manifest")
    return manifest


def config_from_manifest(manifest: dict) -> SynthConfig:
    """The SynthConfig stored in a manifest; unknown keys are an InputFileError."""
    stored = manifest.get("config")
    known = {f.name for f in fields(SynthConfig)}
    if not isinstance(stored, dict) or set(stored) - known:
        raise InputFileError(f"synthetic manifest config has unknown or missing fields: {stored!r}")
    return SynthConfig(**stored)


def ensure_synthetic(cache_dir: str | os.PathLike, config: SynthConfig = SynthConfig(),
                     progress: Progress | None = None) -> SynthPaths:
    """The dataset for `config` under `cache_dir/synth-<key>`, generated on first use.
    Built in a temporary folder beside it and renamed into place when complete, so an
    interrupted run never leaves a folder that looks finished."""
    config.validate()
    cache = Path(cache_dir)
    paths = SynthPaths.under(cache / f"synth-{config.cache_key()}")
    if _is_complete(paths, config):
        return paths
    cache.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{paths.root.name}.", dir=cache))
    try:
        generate(temporary, config, progress)
        if paths.root.exists():  # a stale or concurrent copy
            if _is_complete(paths, config):
                return paths
            shutil.rmtree(paths.root)
        os.rename(temporary, paths.root)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
    return paths


def _is_complete(paths: SynthPaths, config: SynthConfig) -> bool:
    if not paths.manifest.is_file():
        return False
    try:
        return config_from_manifest(read_manifest(paths.root)) == config
    except (InputFileError, TypeError):
        return False
