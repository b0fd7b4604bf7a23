"""Flattened ranges: the index arithmetic behind "every pair of a prediction and the
ground truths of its video" without a Python loop."""

from __future__ import annotations

import numpy as np


def ragged_arange(starts: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated ranges [starts[i], starts[i] + sizes[i]).

    Returns (owner, values), both (sum(sizes),): owner[j] is the i whose range holds j.
    """
    starts = np.asarray(starts, dtype=np.int64)
    sizes = np.asarray(sizes, dtype=np.int64)
    owner = np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)
    offsets = np.cumsum(sizes) - sizes  # (n,) where each range begins in the output
    values = starts[owner] + (np.arange(owner.size, dtype=np.int64) - offsets[owner])
    return owner, values
