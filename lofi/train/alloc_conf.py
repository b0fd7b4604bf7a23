"""PyTorch's caching-allocator settings a plan trains with (`PYTORCH_CUDA_ALLOC_CONF`),
set before CUDA starts: the allocator reads the variable once, when it is first used."""

from __future__ import annotations

import os

ENV = "PYTORCH_CUDA_ALLOC_CONF"


def merged_setting(current: str | None, setting: str) -> str:
    """`setting` added to the comma-separated options already in `current` (a key given
    there is replaced)."""
    key = setting.partition(":")[0]
    kept = [part for part in (current or "").split(",") if part.strip() and part.partition(":")[0].strip() != key]
    return ",".join([*kept, setting])


def apply_alloc_conf(setting: str | None) -> str | None:
    """Make this process's allocator use `setting` (e.g. "expandable_segments:True"; None:
    leave it alone). Before CUDA starts the environment variable is enough (and child
    processes inherit it); once it has started, the allocator is told directly. Returns
    the PYTORCH_CUDA_ALLOC_CONF in effect."""
    if setting is None:
        return os.environ.get(ENV)
    value = merged_setting(os.environ.get(ENV), setting)
    os.environ[ENV] = value
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.memory._set_allocator_settings(setting)
    return value
