"""BMN head (Lin et al., "BMN: Boundary-Matching Network for Temporal Action Proposal
Generation", ICCV 2019), pure PyTorch. Widths follow the public code that LoFi used
(JJBOY/BMN-Boundary-Matching-Network `models.py`, supplementary footnote 2): every 1D
layer is 256 wide, so the BM layer samples 256 channels.

    features (B, C, T)
      -> Conv1d(C, 256, 3, g4) + ReLU -> Conv1d(256, 256, 3, g4) + ReLU       = base (B, 256, T)
      TEM: base -> Conv1d(256, 256, 3, g4) + ReLU -> Conv1d(256, 1, 1) -> sigmoid  (B, T) x 2
      PEM: base -> Conv1d(256, 256, 3) + ReLU -> BM layer                  (B, 256, 32, D, T)
           -> Conv3d(256, 512, (32, 1, 1), stride (32, 1, 1)) + ReLU        (B, 512, D, T)
           -> Conv2d 512 -> 128 (1x1), 3x3, 3x3 + ReLU -> Conv2d 128 -> 2 (1x1), sigmoid

The Conv3d has a kernel that spans the whole sample axis, so it is the same linear map as
a 1x1 Conv2d over the 256 * 32 flattened channels (channel c * 32 + n); it is written
that way (one GEMM, no 5-D convolution, no im2col buffer on CPU), with the same number
of weights."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from lofi.models.heads.sampling import SamplingLayer, bmn_bm_sampling, dense_matrix, map_through
from lofi.models.heads.output import HeadOutput, MapHead, grouped_conv

HIDDEN_1D = 256
HIDDEN_2D = 128
HIDDEN_3D = 512
NUM_SAMPLE = 32  # opts.num_sample
SAMPLES_PER_BIN = 3  # opts.num_sample_perbin
BOUNDARY_RATIO = 0.5  # opts.prop_boundary_ratio


class BoundaryMatching(SamplingLayer):
    """(B, C, T) -> (B, C * 32, D, T): x @ the fixed [T, 32 * D * T] sampling mask, one
    mask for T = temporal_dim and each of `extra_temporal_dims`."""

    owner = "BMN head"

    def __init__(self, temporal_dim: int, *, extra_temporal_dims: Sequence[int] = (), device=None, dtype=None):
        super().__init__((temporal_dim, *extra_temporal_dims))
        for t in self.temporal_dims:
            sampling = bmn_bm_sampling(t, NUM_SAMPLE, SAMPLES_PER_BIN, BOUNDARY_RATIO)
            self.register_matrix("sample_matrix", t, dense_matrix(sampling, device=device, dtype=dtype))

    def forward(self, x: Tensor, durations: slice | None = None) -> Tensor:
        """x (B, C, T) -> (B, C * 32, D, T); with `durations`, only those rows of D."""
        return self.sample("sample_matrix", x, NUM_SAMPLE, durations)


class BMN(MapHead):
    """BMN head (`MapHead`), at T in (temporal_dim, *extra_temporal_dims)."""

    def __init__(self, in_channels: int, temporal_dim: int, *, extra_temporal_dims: Sequence[int] = (),
                 device=None, dtype=None):
        super().__init__(in_channels, temporal_dim)
        fk = {"device": device, "dtype": dtype}
        self.base = nn.Sequential(*grouped_conv(in_channels, HIDDEN_1D, **fk), *grouped_conv(HIDDEN_1D, HIDDEN_1D, **fk))
        self.start_branch = self._tem_branch(fk)
        self.end_branch = self._tem_branch(fk)
        self.proposal_1d = nn.Sequential(nn.Conv1d(HIDDEN_1D, HIDDEN_1D, 3, padding=1, **fk), nn.ReLU(inplace=True))
        self.bm_layer = BoundaryMatching(temporal_dim, extra_temporal_dims=extra_temporal_dims, **fk)
        self.temporal_dims = self.bm_layer.temporal_dims
        self.proposal_3d = nn.Sequential(  # Conv3d(256, 512, (32, 1, 1)) as a 1x1 Conv2d
            nn.Conv2d(HIDDEN_1D * NUM_SAMPLE, HIDDEN_3D, 1, **fk), nn.ReLU(inplace=True),
        )
        # `+head` policies: the sampled map is recomputed in backward (`map_through`)
        self.checkpoint_map = False
        self.proposal_2d = nn.Sequential(
            nn.Conv2d(HIDDEN_3D, HIDDEN_2D, 1, **fk), nn.ReLU(inplace=True),
            nn.Conv2d(HIDDEN_2D, HIDDEN_2D, 3, padding=1, **fk), nn.ReLU(inplace=True),
            nn.Conv2d(HIDDEN_2D, HIDDEN_2D, 3, padding=1, **fk), nn.ReLU(inplace=True),
            nn.Conv2d(HIDDEN_2D, 2, 1, **fk), nn.Sigmoid(),
        )

    @staticmethod
    def _tem_branch(fk: dict) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv1d(HIDDEN_1D, HIDDEN_1D, 3, padding=1, groups=4, **fk), nn.ReLU(inplace=True),
            nn.Conv1d(HIDDEN_1D, 1, 1, **fk), nn.Sigmoid(),
        )

    def _sampled_map(self, proposal: Tensor, durations: slice | None = None) -> Tensor:
        """BM layer and the Conv3d: (B, 256, T) -> (B, 512, D, T), through the
        (B, 256 * 32, D, T) sampled map, the head's largest activation (with
        `durations`: only those rows of D)."""
        return self.proposal_3d(self.bm_layer(proposal, durations))

    def forward(self, features: Tensor) -> HeadOutput:
        self.bm_layer.check_temporal_dim(features.shape[-1])  # fail before any work
        base = self.base(features)  # (B, 256, T)
        start = self.start_branch(base).squeeze(1)  # (B, T)
        end = self.end_branch(base).squeeze(1)  # (B, T)
        proposal = self.proposal_1d(base)  # (B, 256, T)
        mapped = map_through(self._sampled_map, self, proposal, self.checkpoint_map)  # (B, 512, D, T)
        confidence_map = self.proposal_2d(mapped)  # (B, 2, D, T)
        return HeadOutput(start=start, end=end, confidence_map=confidence_map)
