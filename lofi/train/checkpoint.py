"""Training checkpoints that never lose work.

`latest.pt` is written atomically (temporary file, fsync, rename); the checkpoint it
replaces is first kept as `previous.pt`, so a crash at any moment leaves at least one
whole checkpoint. Loading uses `weights_only=True` and falls back to `previous.pt`
with a warning when `latest.pt` is corrupt.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lofi.errors import CheckpointError
from planner.atomic_files import atomic_write

LATEST = "latest.pt"
PREVIOUS = "previous.pt"


@dataclass(frozen=True)
class LoadedCheckpoint:
    state: dict[str, Any]
    path: Path
    fell_back: bool  # True when latest.pt was unreadable and previous.pt was used


def save_checkpoint(folder: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write `state` as the new latest checkpoint of `folder`, keeping the old one as
    the previous checkpoint until the new one is whole."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)  # serialise first: a failure here touches no file
    payload = buffer.getvalue()
    latest = folder / LATEST
    if latest.exists():
        # A hard link keeps the old latest reachable as previous.pt while the new one
        # is written; os.replace below then swaps latest.pt in one step.
        previous = folder / PREVIOUS
        staging = folder / f".{PREVIOUS}.staging"
        staging.unlink(missing_ok=True)
        try:
            os.link(latest, staging)
        except OSError:  # file systems without hard links
            staging.write_bytes(latest.read_bytes())
        os.replace(staging, previous)
    return atomic_write(latest, lambda file: file.write(payload))


def load_checkpoint(folder: str | os.PathLike, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Load the latest whole checkpoint of `folder` (weights_only=True)."""
    folder = Path(folder)
    candidates = [folder / LATEST, folder / PREVIOUS]
    errors: list[str] = []
    for index, path in enumerate(candidates):
        if not path.exists():
            continue
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as error:  # corrupt, truncated or not a checkpoint at all
            errors.append(f"{path}: {type(error).__name__}: {error}".splitlines()[0])
            continue
        if not isinstance(state, dict):
            errors.append(f"{path}: not a checkpoint dictionary")
            continue
        if errors:
            warnings.warn(
                f"latest checkpoint unreadable ({errors[0]}); resuming from {path.name}",
                RuntimeWarning,
                stacklevel=2,
            )
        return LoadedCheckpoint(state=state, path=path, fell_back=index > 0)
    if errors:
        raise CheckpointError("no readable checkpoint in " + str(folder) + ": " + "; ".join(errors))
    raise CheckpointError(f"no checkpoint to resume from in {folder}")


def has_checkpoint(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return (folder / LATEST).exists() or (folder / PREVIOUS).exists()
