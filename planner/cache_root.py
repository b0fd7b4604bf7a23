"""Where the project keeps what it can rebuild: traces (`planner.tracing.cache`), the
synthetic dataset, pre-trained weights it made."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "LOFI_CACHE"


def cache_root() -> Path:
    """$LOFI_CACHE, else $XDG_CACHE_HOME/lofi, else ~/.cache/lofi: where the project keeps
    what it can rebuild (traces, the synthetic dataset). An XDG_CACHE_HOME that is not
    an absolute path is ignored, as the XDG Base Directory specification says."""
    base = os.environ.get(CACHE_ENV)
    if base:
        return Path(base).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "lofi"
    return Path.home() / ".cache" / "lofi"
