"""Atomic file writes: a temporary file in the same folder, fsync, then rename, so a
reader (or a crash) never sees half a file and the previous version survives until the
new one is whole. Used by the planner (plans, trace cache) and by its callers (checkpoints,
features, results, datasets) alike."""

from __future__ import annotations

import glob
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO[bytes]], None], *, before_replace: Callable[[], None] | None = None
) -> Path:
    """Call `write(file)` on a temporary file beside `path`, then move it into place.
    `before_replace` runs once the new content is whole on disk, just before the rename
    (checkpoint rotation: nothing old is touched until the new file is safe)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        honour_umask(temporary)
        if before_replace is not None:
            before_replace()
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)
    return target


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike, document: Any) -> Path:
    return atomic_write_text(path, json.dumps(document, indent=2, sort_keys=False) + "\n")


def honour_umask(path: str | os.PathLike) -> None:
    """Give a file made by mkstemp (always 0600) the mode an ordinary new file gets
    under the process's umask (0644 under the usual 022)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def check_writable(path: str | os.PathLike) -> None:
    """Raise OSError now, before any long work, if `path` (a file written later with
    `atomic_write`) could not be: its folder cannot be created or takes no new file
    (read-only file system, no permission)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    os.unlink(temporary)


def temporaries(folder: str | os.PathLike, name: str) -> list[Path]:
    """The temporary files `atomic_write` leaves beside `folder/name` when killed."""
    return sorted(Path(folder).glob(f".{glob.escape(name)}.*.tmp"))


def _fsync_directory(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories can't be opened."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
