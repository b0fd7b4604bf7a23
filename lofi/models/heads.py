"""The temporal-action-localization heads by name: `build_head("gtad" | "bmn", ...)`.

Every head maps snippet features (B, C, T) to a `HeadOutput`: start and end boundary
probabilities (B, T) and a confidence map (B, 2, T, T) laid out (duration, start),
channel 0 = IoU regression, channel 1 = classification. The anchor convention is in
`lofi.models.labels`. Heads build on the `meta` device and trace under FakeTensorMode
(no data-dependent control flow); their fixed sampling matrices are non-persistent
buffers, so they follow `.to(device)` and stay out of checkpoints."""

from __future__ import annotations

from numbers import Integral
from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

from lofi.errors import OptionError

MIN_TEMPORAL_DIM = 4


class HeadOutput(NamedTuple):
    start: Tensor  # (B, T) start-boundary probability
    end: Tensor  # (B, T) end-boundary probability
    confidence_map: Tensor  # (B, 2, T, T): [IoU regression, classification] x (duration, start)


def _gtad(**kwargs) -> nn.Module:
    from lofi.models.gtad import GTAD

    return GTAD(**kwargs)


def _bmn(**kwargs) -> nn.Module:
    from lofi.models.bmn import BMN

    return BMN(**kwargs)


HEADS: dict[str, Callable[..., nn.Module]] = {"gtad": _gtad, "bmn": _bmn}


def build_head(
    name: str,
    *,
    in_channels: int,
    temporal_dim: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """A freshly initialised head. Raises OptionError for an unknown name or a shape the
    head cannot take (T < 4; C not a positive multiple of 4, the grouped first conv)."""
    if name not in HEADS:
        raise OptionError(f"unknown TAL head {name!r}; choose one of: {', '.join(sorted(HEADS))}")
    if not isinstance(temporal_dim, Integral) or temporal_dim < MIN_TEMPORAL_DIM:
        raise OptionError(f"head {name!r}: temporal_dim must be an integer >= {MIN_TEMPORAL_DIM}, got {temporal_dim!r}")
    if not isinstance(in_channels, Integral) or in_channels < 4 or in_channels % 4:
        raise OptionError(f"head {name!r}: in_channels must be a positive multiple of 4, got {in_channels!r}")
    return HEADS[name](in_channels=int(in_channels), temporal_dim=int(temporal_dim), device=device, dtype=dtype)


def constant_buffer_names(module: nn.Module) -> list[str]:
    """Fully qualified names of the fixed sampling matrices inside `module` (which may
    wrap a head). They never change: pass them to DDP's
    `_set_params_and_buffers_to_ignore_for_model` (or use broadcast_buffers=False) so
    that DDP does not re-broadcast ~150 MB per forward at T = 100."""
    from lofi.models.bmn import BoundaryMatching
    from lofi.models.gtad import SGAlign

    names = []
    for prefix, sub in module.named_modules():
        if isinstance(sub, (SGAlign, BoundaryMatching)):
            names += [f"{prefix}.{n}" if prefix else n for n, _ in sub.named_buffers(recurse=False)]
    return names
