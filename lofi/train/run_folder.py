"""The run folder `runs/<name>/` and what is written into it.

    config.json        the resolved TrainConfig
    plan.json          the plan the run follows
    metrics.jsonl      one JSON object per logged step / epoch / stage
    lofi/              checkpoints of the LoFi stage (latest.pt, previous.pt)
    head/              checkpoints of the head stage
    features/          full-fidelity features, one file per video, plus index.json
    results.json       detections (or proposals) in the official ActivityNet format
    summary.json       metrics, times, peak memory measured vs planned, fallbacks
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lofi.errors import OptionError


@dataclass(frozen=True)
class RunFolder:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def lofi_checkpoints(self) -> Path:
        return self.root / "lofi"

    @property
    def head_checkpoints(self) -> Path:
        return self.root / "head"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def proposals(self) -> Path:
        return self.root / "proposals.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def create(self) -> RunFolder:
        self.root.mkdir(parents=True, exist_ok=True)
        return self


def run_folder(runs_dir: str | os.PathLike, name: str) -> RunFolder:
    """`runs_dir/name`, refusing names that would escape runs_dir."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or os.sep in name:
        raise OptionError(f"run name {name!r} must be a plain folder name")
    return RunFolder(Path(runs_dir) / name)


def numbered_run(runs_dir: str | os.PathLike, stem: str, *, existing: bool) -> RunFolder:
    """`stem`, `stem-2`, `stem-3`, ... under runs_dir: the latest that exists when
    `existing` (to resume), else the first that does not hold a run yet."""
    def name(number: int) -> str:
        return stem if number == 1 else f"{stem}-{number}"

    number = 1
    while _holds_run(Path(runs_dir) / name(number)):
        number += 1
    if existing and number > 1:
        number -= 1
    return run_folder(runs_dir, name(number))


def _holds_run(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


class MetricsLog:
    """Appends one JSON line per record (flushed and fsynced: a crash loses at most the
    line being written). Only the main rank writes."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled

    def write(self, **record: Any) -> None:
        if not self.enabled:
            return
        record.setdefault("time", round(time.time(), 3))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")
            file.flush()
            os.fsync(file.fileno())
