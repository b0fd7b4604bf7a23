"""Fixed sampling matrices that turn snippet features (B, C, T) into per-anchor features
(B, C, P, D, T) with one matmul, for G-TAD's SGAlign and BMN's boundary-matching layer.

A matrix W has shape (T, P * D * T): column (p * D + d) * T + s holds the interpolation
weights over the T snippets of sample point p of anchor (duration d, start s), so
`x @ W` viewed as (B, C, P, D, T) (and then as (B, C * P, D, T), channel c * P + p, the
official channel order) is the sampled map. Invalid anchors (s + d + 1 > T, see
`lofi.models.labels`) get all-zero columns.

Geometry in snippet-index coordinates (feature i sits at index i): anchor (d, s) spans
indices [s, s + d]; both heads extend it by ratio * (d + 1) on each side.

* G-TAD (`gtad_lib/models.py::GraphAlign._get_anchors`, `Align1D_cuda_kernal.cu`,
  sampling_ratio 0): P bins over the extended region; bin p averages G = ceil(len / P)
  points at start + p * bin + (g + 0.5) * bin / G; a point t interpolates linearly, is 0
  outside [-1, T], clamps to index 0 on [-1, 0] and to index T - 1 past T - 1.
* BMN (`models.py::_get_interp1d_mask`, 2019 version, (duration, start) layout): P * Q
  points evenly spaced over the extended region, end points included; bin p averages its
  Q points; point t gives 1 - frac to trunc(t) and frac to ceil(t) (math.modf), each only
  when inside [0, T - 1].

The weights are built once per configuration in numpy as a sparse list (cached) and made
dense on the module's device (`dense_matrix`). `SamplingLayer` is the module base of
both layers: one set of matrices per temporal size T the head was built for (C-LoFi
trains one head at T = 100, 25 and 50), picked by the input's T."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from lofi.errors import OptionError
from lofi.models.encoder_checkpointing import piecewise_segments


class SparseSampling(NamedTuple):
    """Sparse form of a (T, P * D * T) sampling matrix; repeated (row, col) pairs add up."""

    rows: np.ndarray  # (K,) int64 snippet index
    cols: np.ndarray  # (K,) int64 (p * D + d) * T + s
    weights: np.ndarray  # (K,) float32
    temporal_dim: int
    num_points: int

    @property
    def shape(self) -> tuple[int, int]:
        t = self.temporal_dim
        return (t, self.num_points * t * t)


def _freeze(rows: list, cols: list, weights: list, t: int, p: int) -> SparseSampling:
    arrays = [np.concatenate(rows), np.concatenate(cols), np.concatenate(weights).astype(np.float32)]
    for a in arrays:
        a.setflags(write=False)  # shared through the cache
    return SparseSampling(arrays[0], arrays[1], arrays[2], t, p)


def _columns(t: int, d: int, p: int, starts: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Column index of (point p, duration d, start s), broadcast to `shape` whose axes are
    (start, point, sample)."""
    pts = np.arange(p)[None, :, None]
    col = (pts * t + d) * t + starts[:, None, None]
    return np.broadcast_to(col, shape)


@functools.lru_cache(maxsize=16)
def gtad_sgalign_sampling(temporal_dim: int, num_points: int, expand_ratio: float = 0.5) -> SparseSampling:
    """G-TAD SGAlign weights (Align1D with sampling_ratio 0) for P = num_points bins."""
    t, p = int(temporal_dim), int(num_points)
    rows, cols, weights = [], [], []
    for d in range(t):
        starts = np.arange(t - d)  # valid anchors of this duration
        center_len = d + 1.0
        roi_start = starts - center_len * expand_ratio  # (S,)
        roi_len = max(d + 2.0 * center_len * expand_ratio, 1.0)  # CUDA: max(end - start, 1)
        bin_size = roi_len / p
        grid = math.ceil(roi_len / p)
        offs = (np.arange(p)[:, None] * bin_size + (np.arange(grid)[None, :] + 0.5) * bin_size / grid)
        pos = roi_start[:, None, None] + offs[None]  # (S, P, G)
        inside = (pos >= -1.0) & (pos <= t)
        pos = np.clip(pos, 0.0, None)
        low = np.floor(pos).astype(np.int64)
        last = low >= t - 1
        low = np.where(last, t - 1, low)
        frac = np.where(last, 0.0, pos - low)
        high = np.where(last, t - 1, low + 1)
        col = _columns(t, d, p, starts, pos.shape)
        for idx, w in ((low, 1.0 - frac), (high, frac)):
            keep = inside & (w > 0)
            rows.append(idx[keep])
            cols.append(col[keep])
            weights.append(w[keep] / grid)
    return _freeze(rows, cols, weights, t, p)


@functools.lru_cache(maxsize=16)
def bmn_bm_sampling(
    temporal_dim: int, num_points: int = 32, points_per_bin: int = 3, boundary_ratio: float = 0.5
) -> SparseSampling:
    """BMN boundary-matching weights: num_points bins of points_per_bin points each."""
    t, p, q = int(temporal_dim), int(num_points), int(points_per_bin)
    rows, cols, weights = [], [], []
    for d in range(t):
        starts = np.arange(t - d)
        center_len = d + 1.0
        xmin = starts - center_len * boundary_ratio  # (S,)
        xmax = starts + d + center_len * boundary_ratio
        step = (xmax - xmin) / (p * q - 1.0)
        pos = xmin[:, None, None] + step[:, None, None] * np.arange(p * q).reshape(1, p, q)  # (S, P, Q)
        down = np.trunc(pos)  # math.modf: integer part rounds toward zero
        frac = pos - down
        up = np.ceil(pos)
        col = _columns(t, d, p, starts, pos.shape)
        for idx, w in ((down, 1.0 - frac), (up, frac)):
            keep = (idx >= 0) & (idx <= t - 1) & (w != 0)
            rows.append(idx[keep].astype(np.int64))
            cols.append(col[keep])
            weights.append(w[keep] / q)
    return _freeze(rows, cols, weights, t, p)


def dense_matrix(
    sampling: SparseSampling, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The (T, P * D * T) matrix on `device` (None: the default device, so a
    `with torch.device("meta")` block applies); on the meta device only its shape."""
    out = torch.zeros(sampling.shape, device=device, dtype=torch.float32)
    if out.device.type != "meta":
        index = [torch.from_numpy(np.array(a)).to(out.device) for a in (sampling.rows, sampling.cols)]
        out.index_put_(tuple(index), torch.from_numpy(np.array(sampling.weights)).to(out.device), accumulate=True)
    return out.to(dtype or torch.get_default_dtype())


class SamplingLayer(nn.Module):
    """Base of G-TAD's SGAlign and BMN's BM layer: fixed sampling matrices for every
    temporal size in `temporal_dims` (the first is the head's `temporal_dim`), stored as
    non-persistent buffers, so they follow `.to()` and stay out of `state_dict()`.

    A matrix of kind K (e.g. "inner_matrix") for T is the buffer `K` when T is the
    first size and `K_t{T}` otherwise: a head built for one T keeps its old names."""

    owner = "sampling layer"  # names the head in errors

    def __init__(self, temporal_dims: Sequence[int]) -> None:
        super().__init__()
        self.temporal_dims = tuple(dict.fromkeys(int(t) for t in temporal_dims))  # unique, in order
        self.temporal_dim = self.temporal_dims[0]

    def buffer_name(self, kind: str, t: int) -> str:
        return kind if t == self.temporal_dim else f"{kind}_t{t}"

    def register_matrix(self, kind: str, t: int, matrix: Tensor) -> None:
        self.register_buffer(self.buffer_name(kind, t), matrix, persistent=False)

    def check_temporal_dim(self, t: int) -> None:
        """Raise OptionError unless the layer holds matrices for T = t. Reads only the
        static size, so it works on meta and fake tensors."""
        if t not in self.temporal_dims:
            built = ", ".join(str(d) for d in sorted(self.temporal_dims))
            raise OptionError(
                f"{self.owner} got features with T = {t} but holds sampling matrices only for T in "
                f"{{{built}}}; build it with {t} in temporal_dim or extra_temporal_dims"
            )

    def matrix(self, kind: str, t: int) -> Tensor:
        """The (T, P * D * T) matrix of `kind` for T = t."""
        self.check_temporal_dim(t)
        return getattr(self, self.buffer_name(kind, t))

    def sample(self, kind: str, x: Tensor, points: int, durations: slice | None = None) -> Tensor:
        """x (B, C, T) through matrix `kind` of P = `points`: the sampled map
        (B, C * P, D, T), or with `durations` only those rows of D, (B, C * P, Dk, T)
        (the same numbers: every anchor's column is its own)."""
        b, c, t = x.shape
        matrix = self.matrix(kind, t)  # (T, P * D * T); raises for an unknown T
        if durations is None:
            return torch.matmul(x, matrix.to(x.dtype)).view(b, c * points, t, t)
        part = matrix.view(t, points, t, t)[:, :, durations].to(x.dtype)  # (T, P, Dk, T)
        out = torch.einsum("bct,tpds->bcpds", x, part)  # (B, C, P, Dk, T)
        return out.reshape(b, c * points, -1, t)


MAP_PIECES = 10  # `+head`: checkpoint segments over the anchor durations (a tenth of the map each)


def map_through(fn: Callable[..., Tensor], head: nn.Module, x: Tensor, checkpointed: bool) -> Tensor:
    """A head's sampled-map block `fn` (x (B, C, T), durations -> (B, C', D, T), the
    rows of D in `durations`, all of them for None) on x: plainly, or `checkpointed`
    (the `+head` policies) in MAP_PIECES checkpoint segments over the durations, so that
    backward holds one piece's map at a time."""
    if not checkpointed:
        return fn(x)
    pieces = duration_pieces(x.shape[-1], MAP_PIECES)
    return piecewise_segments(fn, head, x, pieces, dim=2)


def duration_pieces(t: int, pieces: int) -> list[slice]:
    """range(T) of durations in `pieces` near-equal consecutive slices (fewer when T < pieces)."""
    bounds = sorted({i * t // pieces for i in range(pieces + 1)})
    return [slice(a, z) for a, z in zip(bounds, bounds[1:])]
