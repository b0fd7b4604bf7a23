"""Shared test set-up: GPU tests are skipped without CUDA; threads are kept low so the
suite runs on a 2-core machine."""

from __future__ import annotations

import os

# PyTorch's OpenMP threads spin while waiting by default; on a shared 2-core machine that
# starves the other process. Must be set before torch (and its OpenMP runtime) loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
