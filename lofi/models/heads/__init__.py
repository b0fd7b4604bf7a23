"""The temporal-action-localization heads by name: `build_head("gtad" | "bmn", ...)`.

Every head maps snippet features (B, C, T) to a `HeadOutput` (`output.py`): start and end boundary
probabilities (B, T) and a confidence map (B, 2, T, T) laid out (duration, start),
channel 0 = IoU regression, channel 1 = classification. The anchor convention is in
`lofi.models.labels`. Heads build on the `meta` device and trace under FakeTensorMode
(no data-dependent control flow); their fixed sampling matrices are non-persistent
buffers, so they follow `.to(device)` and stay out of checkpoints.

One head serves several temporal sizes (C-LoFi cycles T = 100, 25, 50 with the same
weights): it holds the matrices for `temporal_dim` and every `extra_temporal_dims`, and
its forward picks them by the input's T; any other T raises OptionError."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from numbers import Integral
from typing import Callable

import torch
from torch import nn

from lofi.errors import OptionError
from lofi.models.heads.bmn import BMN
from lofi.models.heads.sampling import SamplingLayer
from lofi.models.heads.gtad import GTAD

MIN_TEMPORAL_DIM = 4


HEADS: dict[str, Callable[..., nn.Module]] = {"gtad": GTAD, "bmn": BMN}


def _valid_temporal_dim(t: object) -> bool:
    return isinstance(t, Integral) and not isinstance(t, bool) and t >= MIN_TEMPORAL_DIM


def _extra_temporal_dims(name: str, temporal_dim: int, extra: Sequence[int]) -> tuple[int, ...]:
    """The extra sizes as ints, unique, in order, without `temporal_dim`."""
    if isinstance(extra, (str, bytes)) or not isinstance(extra, Iterable):
        raise OptionError(f"head {name!r}: extra_temporal_dims must be a sequence of integers, got {extra!r}")
    extra = tuple(extra)
    bad = [t for t in extra if not _valid_temporal_dim(t)]
    if bad:
        raise OptionError(f"head {name!r}: extra_temporal_dims must be integers >= {MIN_TEMPORAL_DIM}, "
                          f"got {bad[0]!r} in {extra!r}")
    return tuple(t for t in dict.fromkeys(int(t) for t in extra) if t != temporal_dim)


def build_head(
    name: str,
    *,
    in_channels: int,
    temporal_dim: int,
    extra_temporal_dims: Sequence[int] = (),
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """A freshly initialised head for features (B, in_channels, T), T = temporal_dim or
    any of `extra_temporal_dims` (each size costs its sampling matrices, ~32·T³ floats
    for BMN and ~36·T³ for G-TAD, and no parameters); the head's `temporal_dims` lists
    them, `temporal_dim` first. Raises OptionError for an unknown name or a shape the
    head cannot take (a T < 4; C not a positive multiple of 4, the grouped first conv)."""
    if name not in HEADS:
        raise OptionError(f"unknown TAL head {name!r}; choose one of: {', '.join(sorted(HEADS))}")
    if not _valid_temporal_dim(temporal_dim):
        raise OptionError(f"head {name!r}: temporal_dim must be an integer >= {MIN_TEMPORAL_DIM}, got {temporal_dim!r}")
    if not isinstance(in_channels, Integral) or in_channels < 4 or in_channels % 4:
        raise OptionError(f"head {name!r}: in_channels must be a positive multiple of 4, got {in_channels!r}")
    extra = _extra_temporal_dims(name, int(temporal_dim), extra_temporal_dims)
    return HEADS[name](in_channels=int(in_channels), temporal_dim=int(temporal_dim), extra_temporal_dims=extra,
                       device=device, dtype=dtype)


def constant_buffer_names(module: nn.Module) -> list[str]:
    """Fully qualified names of the fixed sampling matrices inside `module` (which may
    wrap a head), for every temporal size the head was built for. They never change:
    pass them to DDP's `_set_params_and_buffers_to_ignore_for_model` (or use
    broadcast_buffers=False) so that DDP does not re-broadcast ~150 MB per forward at
    T = 100."""
    names = []
    for prefix, sub in module.named_modules():
        if isinstance(sub, SamplingLayer):
            names += [f"{prefix}.{n}" if prefix else n for n, _ in sub.named_buffers(recurse=False)]
    return names
