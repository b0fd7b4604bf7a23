"""Training checkpoints that never lose work.

A save writes the new checkpoint to a temporary file and fsyncs it first; only then is
the old `latest.pt` kept as `previous.pt` (and only when it is whole: a corrupt latest
never replaces a readable previous), and the new file renamed over `latest.pt`. A crash
at any moment therefore leaves at least one whole checkpoint. Loading checks the file's
CRCs, uses `weights_only=True`, and falls back to `previous.pt` with a warning when
`latest.pt` is corrupt. `remove_temporaries` clears what a killed save left behind.
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lofi.errors import CheckpointError
from planner.atomic_files import atomic_write, temporaries

LATEST = "latest.pt"
PREVIOUS = "previous.pt"
STAGING = ".previous.pt.staging"


@dataclass(frozen=True)
class LoadedCheckpoint:
    state: dict[str, Any]
    path: Path
    fell_back: bool  # True when latest.pt was unreadable and previous.pt was used


def save_checkpoint(folder: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write `state` as the new latest checkpoint of `folder`; the old latest becomes the
    previous checkpoint once the new one is whole on disk, if the old one is whole."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)  # serialise first: a failure here touches no file
    payload = buffer.getvalue()
    return atomic_write(folder / LATEST, lambda file: file.write(payload), before_replace=lambda: _rotate(folder))


def _rotate(folder: Path) -> None:
    """Keep the current latest.pt as previous.pt, unless it is unreadable (then the
    previous checkpoint, the last whole one, stays)."""
    latest, previous = folder / LATEST, folder / PREVIOUS
    if not _is_whole(latest):
        return
    # A hard link keeps the old latest reachable as previous.pt while latest.pt is
    # replaced; os.replace swaps previous.pt in one step.
    staging = folder / STAGING
    staging.unlink(missing_ok=True)
    try:
        os.link(latest, staging)
    except OSError:  # file systems without hard links
        atomic_write(staging, lambda file: file.write(latest.read_bytes()))
    os.replace(staging, previous)


def _is_whole(path: Path) -> bool:
    """Every member of the checkpoint's zip archive present and matching its CRC."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete what a save killed mid-way left in `folder` (a partial `.latest.pt.*.tmp`,
    a staging link); only safe while no other process writes there (the run lock)."""
    folder = Path(folder)
    stale = [*temporaries(folder, LATEST), *temporaries(folder, STAGING)]
    if (folder / STAGING).exists():
        stale.append(folder / STAGING)
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load_checkpoint(folder: str | os.PathLike, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Load the latest whole checkpoint of `folder` (weights_only=True)."""
    folder = Path(folder)
    candidates = [folder / LATEST, folder / PREVIOUS]
    errors: list[str] = []
    for index, path in enumerate(candidates):
        if not path.exists():
            continue
        if not _is_whole(path):
            errors.append(f"{path}: truncated or corrupt (its zip archive does not check)")
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
