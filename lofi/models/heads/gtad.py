"""G-TAD head (Xu et al., "G-TAD: Sub-Graph Localization for Temporal Action Detection",
CVPR 2020), pure PyTorch. Architecture and hyper-parameters follow the official
ActivityNet configuration (frostinassiky/gtad, branch `anet`: gtad_lib/models.py, opts.py:
h_dim_1d 256, h_dim_2d 128, h_dim_3d 512, goi_style 1, kern_2d 1); SGAlign, a CUDA op
there, is a fixed sampling matrix here (`lofi.models.heads.sampling`).

    features (B, C, T)
      -> Conv1d(C, 256, 3, groups 4) + ReLU -> GCNeXt            = base      (B, 256, T)
      base -> GCNeXt -> Conv1d(256, 1, 1) -> sigmoid             = start/end (B, T)
      base -> GCNeXt -> SGAlign: 32 inner + 4 context points     (B, 256 * 36, D, T)
      -> Conv2d 9216 -> 512 -> 128 -> 128 -> 128 -> 2 (1x1) + sigmoid = map  (B, 2, D, T)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lofi.models.heads.sampling import SamplingLayer, dense_matrix, gtad_sgalign_sampling, map_through
from lofi.models.heads.output import HeadOutput, MapHead, grouped_conv

HIDDEN_1D = 256  # opts.h_dim_1d
HIDDEN_2D = 128  # opts.h_dim_2d
HIDDEN_3D = 512  # opts.h_dim_3d
NEIGHBOURS = 3  # GCNeXt k and SGAlign context k
INNER_POINTS = 32  # GraphAlign resolution (anet)
CONTEXT_POINTS = 4  # GraphAlign align_context (anet)
EXPAND_RATIO = 0.5  # GraphAlign expand_ratio


def knn_indices(x: Tensor, k: int) -> Tensor:
    """(B, C, T) -> (B, T, k): indices of each snippet's k nearest snippets in feature
    space (squared Euclidean; the snippet itself included), as G-TAD's `knn`."""
    inner = torch.matmul(x.transpose(1, 2), x)  # (B, T, T)
    sq = (x * x).sum(dim=1)  # (B, T)
    neg_dist = 2 * inner - sq.unsqueeze(1) - sq.unsqueeze(2)  # (B, T, T)
    return neg_dist.topk(k=k, dim=-1).indices


def gather_neighbours(x: Tensor, idx: Tensor) -> Tensor:
    """x (B, C, T), idx (B, T, k) -> neighbour features (B, C, T, k)."""
    b, c, t = x.shape
    k = idx.shape[-1]
    flat = idx.reshape(b, 1, t * k).expand(b, c, t * k)
    return x.gather(2, flat).view(b, c, t, k)


class GCNeXt(nn.Module):
    """Residual graph block: temporal stream (1x1 -> grouped k=3 -> 1x1 over neighbouring
    snippets) + semantic stream (edge convolution over [neighbour, self] for the k nearest
    neighbours in feature space, max over neighbours) + identity, then ReLU."""

    def __init__(self, channels: int, *, k: int = NEIGHBOURS, groups: int = 32, width_per_group: int = 4,
                 device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        width = groups * width_per_group
        self.k = k
        self.temporal = nn.Sequential(
            nn.Conv1d(channels, width, 1, **fk), nn.ReLU(inplace=True),
            nn.Conv1d(width, width, 3, padding=1, groups=groups, **fk), nn.ReLU(inplace=True),
            nn.Conv1d(width, channels, 1, **fk),
        )
        self.semantic = nn.Sequential(
            nn.Conv2d(2 * channels, width, 1, **fk), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 1, groups=groups, **fk), nn.ReLU(inplace=True),
            nn.Conv2d(width, channels, 1, **fk),
        )

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T) -> (B, C, T)
        neighbours = gather_neighbours(x, knn_indices(x, self.k))  # (B, C, T, k)
        edges = torch.cat([neighbours, x.unsqueeze(-1).expand_as(neighbours)], dim=1)  # (B, 2C, T, k)
        semantic = self.semantic(edges).amax(dim=-1)  # (B, C, T)
        return F.relu(x + self.temporal(x) + semantic)


class SGAlign(SamplingLayer):
    """Sub-graph of interest alignment. For every anchor, 32 points of the features and 4
    points of the neighbour-mean features (k = 3) over the anchor extended by half its
    length on both sides. Returns the two parts (B, C * 32, D, T) and (B, C * 4, D, T):
    together the (B, C * 36, D, T) map of G-TAD (channel c * 36 + p), kept apart so
    that no concatenated copy of the largest activation is made (see `GTAD.forward`).
    Holds the two matrices for T = temporal_dim and each of `extra_temporal_dims`."""

    owner = "G-TAD head"

    def __init__(self, temporal_dim: int, *, extra_temporal_dims: Sequence[int] = (), device=None, dtype=None):
        super().__init__((temporal_dim, *extra_temporal_dims))
        for t in self.temporal_dims:
            for kind, points in (("inner_matrix", INNER_POINTS), ("context_matrix", CONTEXT_POINTS)):
                sampling = gtad_sgalign_sampling(t, points, EXPAND_RATIO)
                self.register_matrix(kind, t, dense_matrix(sampling, device=device, dtype=dtype))  # (T, P*D*T)

    def forward(self, x: Tensor, durations: slice | None = None) -> tuple[Tensor, Tensor]:
        """x (B, C, T) -> (B, C * 32, D, T), (B, C * 4, D, T); with `durations`, only
        those anchor durations (Dk rows of D)."""
        self.check_temporal_dim(x.shape[-1])
        context = gather_neighbours(x, knn_indices(x, NEIGHBOURS)).mean(dim=-1)  # (B, C, T)
        inner = self.sample("inner_matrix", x, INNER_POINTS, durations)  # (B, C * 32, D, T)
        outer = self.sample("context_matrix", context, CONTEXT_POINTS, durations)  # (B, C * 4, D, T)
        return inner, outer


class GTAD(MapHead):
    """G-TAD head (`MapHead`), at T in (temporal_dim, *extra_temporal_dims)."""

    def __init__(self, in_channels: int, temporal_dim: int, *, extra_temporal_dims: Sequence[int] = (),
                 device=None, dtype=None):
        super().__init__(in_channels, temporal_dim)
        fk = {"device": device, "dtype": dtype}
        self.backbone1 = nn.Sequential(*grouped_conv(in_channels, HIDDEN_1D, **fk), GCNeXt(HIDDEN_1D, **fk))
        self.start_branch = nn.Sequential(GCNeXt(HIDDEN_1D, **fk), nn.Conv1d(HIDDEN_1D, 1, 1, **fk), nn.Sigmoid())
        self.end_branch = nn.Sequential(GCNeXt(HIDDEN_1D, **fk), nn.Conv1d(HIDDEN_1D, 1, 1, **fk), nn.Sigmoid())
        self.backbone2 = GCNeXt(HIDDEN_1D, **fk)
        self.align = SGAlign(temporal_dim, extra_temporal_dims=extra_temporal_dims, **fk)
        self.temporal_dims = self.align.temporal_dims
        # localization: the first 1x1 conv reads all 256 * 36 aligned channels
        self.map_in = nn.Conv2d(HIDDEN_1D * (INNER_POINTS + CONTEXT_POINTS), HIDDEN_3D, 1, **fk)
        # `+head` policies: the sampled map is recomputed in backward (`map_through`)
        self.checkpoint_map = False
        self.map_out = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.Conv2d(HIDDEN_3D, HIDDEN_2D, 1, **fk), nn.ReLU(inplace=True),
            nn.Conv2d(HIDDEN_2D, HIDDEN_2D, 1, **fk), nn.ReLU(inplace=True),
            nn.Conv2d(HIDDEN_2D, HIDDEN_2D, 1, **fk), nn.ReLU(inplace=True),
            nn.Conv2d(HIDDEN_2D, 2, 1, **fk), nn.Sigmoid(),
        )

    def _map_in(self, inner: Tensor, outer: Tensor) -> Tensor:
        """map_in(cat(inner, outer) in channel order c * 36 + p) computed as the sum of two
        1x1 convolutions over the weight's slices: same result, no concatenated copy."""
        w = self.map_in.weight.view(HIDDEN_3D, -1, INNER_POINTS + CONTEXT_POINTS)  # (O, C, 36)
        w_inner = w[:, :, :INNER_POINTS].reshape(HIDDEN_3D, -1, 1, 1)
        w_outer = w[:, :, INNER_POINTS:].reshape(HIDDEN_3D, -1, 1, 1)
        return F.conv2d(inner, w_inner, self.map_in.bias) + F.conv2d(outer, w_outer)

    def _sampled_map(self, graph: Tensor, durations: slice | None = None) -> Tensor:
        """SGAlign and the first 1x1 convolution: (B, 256, T) -> (B, 512, D, T), through
        the (B, 256 * 36, D, T) sampled map, the head's largest activation (with
        `durations`: only those rows of D)."""
        inner, outer = self.align(graph, durations)  # (B, 256*32, D, T), (B, 256*4, D, T)
        return self._map_in(inner, outer)

    def forward(self, features: Tensor) -> HeadOutput:
        self.align.check_temporal_dim(features.shape[-1])  # fail before any work
        base = self.backbone1(features)  # (B, 256, T)
        start = self.start_branch(base).squeeze(1)  # (B, T)
        end = self.end_branch(base).squeeze(1)  # (B, T)
        graph = self.backbone2(base)  # (B, 256, T)
        mapped = map_through(self._sampled_map, self, graph, self.checkpoint_map)  # (B, 512, D, T)
        confidence_map = self.map_out(mapped)  # (B, 2, D, T)
        return HeadOutput(start=start, end=end, confidence_map=confidence_map)
