"""TAL heads (G-TAD, BMN): shapes, ranges, meta/fake tracing, sampling matrices against
loop re-implementations of the official kernels, and hand-checked interpolation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from lofi.errors import OptionError
from lofi.models.heads.sampling import bmn_bm_sampling, dense_matrix, duration_pieces, gtad_sgalign_sampling
from lofi.models.heads.output import HeadOutput
from lofi.models.heads import build_head, constant_buffer_names
from lofi.models.labels import valid_anchor_mask
from lofi.models.losses import tal_loss

C = 64  # small feature width keeps the T = 100 cases fast


@pytest.mark.parametrize("name", ["gtad", "bmn"])
@pytest.mark.parametrize("t", [25, 50, 100])
def test_shapes_and_ranges(name, t):
    torch.manual_seed(0)
    head = build_head(name, in_channels=C, temporal_dim=t)
    with torch.no_grad():
        out = head(torch.randn(1, C, t))
    assert isinstance(out, HeadOutput)
    assert out.start.shape == (1, t) and out.end.shape == (1, t)
    assert out.confidence_map.shape == (1, 2, t, t)
    for x in out:
        assert torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1


def test_smallest_temporal_dim_and_batch():
    head = build_head("gtad", in_channels=8, temporal_dim=4)
    out = head(torch.randn(3, 8, 4))
    assert out.confidence_map.shape == (3, 2, 4, 4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "tad"}, "unknown TAL head 'tad'"),
        ({"temporal_dim": 3}, "temporal_dim must be an integer >= 4, got 3"),
        ({"in_channels": 30}, "in_channels must be a positive multiple of 4, got 30"),
    ],
)
def test_build_head_rejects_bad_options(kwargs, match):
    args = {"name": "gtad", "in_channels": 32, "temporal_dim": 8} | kwargs
    name = args.pop("name")
    with pytest.raises(OptionError, match=match):
        build_head(name, **args)


@pytest.mark.parametrize("name", ["gtad", "bmn"])
def test_meta_device_build_and_forward(name):
    head = build_head(name, in_channels=512, temporal_dim=100, device="meta")
    assert {p.device.type for p in head.parameters()} | {b.device.type for b in head.buffers()} == {"meta"}
    out = head(torch.empty(2, 512, 100, device="meta"))
    assert out.confidence_map.shape == (2, 2, 100, 100) and out.start.shape == (2, 100)
    with torch.device("meta"):  # the default-device context is honoured by the buffers too
        head = build_head(name, in_channels=64, temporal_dim=25)
    assert {b.device.type for b in head.buffers()} == {"meta"}


@pytest.mark.parametrize("name", ["gtad", "bmn"])
def test_fake_tensor_trace_forward_loss_backward(name):
    t = 25
    with FakeTensorMode():
        head = build_head(name, in_channels=C, temporal_dim=t)
        out = head(torch.randn(2, C, t))
        mask = torch.from_numpy(valid_anchor_mask(t))
        loss = tal_loss(out, torch.rand(2, t), torch.rand(2, t), torch.rand(2, t, t), mask)
        loss.total.backward()
        assert all(p.grad is not None and p.grad.shape == p.shape for p in head.parameters())
    assert out.confidence_map.shape == (2, 2, t, t)


def test_parameter_counts_at_c512_t100():
    # the numbers reported in docs/heads.md
    counts = {n: sum(p.numel() for p in build_head(n, in_channels=512, temporal_dim=100, device="meta").parameters())
              for n in ("gtad", "bmn")}
    assert counts == {"gtad": 5_584_772, "bmn": 5_000_068}


def test_sampling_matrices_are_buffers_outside_the_state_dict():
    head = build_head("gtad", in_channels=16, temporal_dim=8)
    assert not any("matrix" in k for k in head.state_dict())
    assert constant_buffer_names(head) == ["align.inner_matrix", "align.context_matrix"]
    wrapped = torch.nn.ModuleDict({"head": build_head("bmn", in_channels=16, temporal_dim=8)})
    assert constant_buffer_names(wrapped) == ["head.bm_layer.sample_matrix"]
    half = head.to(torch.bfloat16)
    assert half.align.inner_matrix.dtype == torch.bfloat16


# -- sampling matrices -----------------------------------------------------------------


def _gtad_reference(t: int, points: int) -> np.ndarray:
    """Scalar re-implementation of Align1DForward (sampling_ratio 0) + GraphAlign anchors,
    returned as (T, P, D, T)."""
    w = np.zeros((t, points, t, t))
    for s in range(t):
        for d in range(t - s):
            roi_start = s - (d + 1) * 0.5
            roi_len = max((s + d + (d + 1) * 0.5) - roi_start, 1.0)
            bin_size = roi_len / points
            grid = math.ceil(roi_len / points)
            for p in range(points):
                for g in range(grid):
                    x = roi_start + p * bin_size + (g + 0.5) * bin_size / grid
                    if x < -1.0 or x > t:
                        continue
                    x = max(x, 0.0)
                    lo = int(x)
                    if lo >= t - 1:
                        w[t - 1, p, d, s] += 1.0 / grid
                        continue
                    w[lo, p, d, s] += (1 - (x - lo)) / grid
                    w[lo + 1, p, d, s] += (x - lo) / grid
    return w


def _bmn_reference(t: int, points: int, per_bin: int) -> np.ndarray:
    """Scalar re-implementation of BMN's _get_interp1d_bin_mask (2019, duration x start)."""
    w = np.zeros((t, points, t, t))
    for s in range(t):
        for d in range(t - s):
            xmin, xmax = s - (d + 1) * 0.5, s + d + (d + 1) * 0.5
            step = (xmax - xmin) / (points * per_bin - 1.0)
            for k in range(points * per_bin):
                x = xmin + step * k
                frac, down = math.modf(x)
                for idx, wt in ((int(down), 1 - frac), (math.ceil(x), frac)):
                    if 0 <= idx <= t - 1:
                        w[idx, k // per_bin, d, s] += wt / per_bin
    return w


def _dense(sampling) -> np.ndarray:
    t, p = sampling.temporal_dim, sampling.num_points
    return dense_matrix(sampling, dtype=torch.float64).numpy().reshape(t, p, t, t)


@pytest.mark.parametrize("t, points", [(7, 32), (7, 4), (12, 4)])
def test_gtad_matrix_matches_align1d_loops(t, points):
    np.testing.assert_allclose(_dense(gtad_sgalign_sampling(t, points)), _gtad_reference(t, points), atol=1e-6)


@pytest.mark.parametrize("t", [6, 11])
def test_bmn_matrix_matches_official_loops(t):
    np.testing.assert_allclose(_dense(bmn_bm_sampling(t, 32, 3)), _bmn_reference(t, 32, 3), atol=1e-6)


def test_gtad_interpolation_by_hand():
    w = _dense(gtad_sgalign_sampling(4, 2))  # (T=4, P=2, D, S)
    # anchor (d=0, s=1): region [0.5, 1.5], 2 bins of 0.5, one point each at 0.75 and 1.25
    np.testing.assert_allclose(w[:, 0, 0, 1], [0.25, 0.75, 0, 0], atol=1e-6)
    np.testing.assert_allclose(w[:, 1, 0, 1], [0, 0.75, 0.25, 0], atol=1e-6)
    # anchor (0, 0): point -0.25 clamps to index 0; anchor (0, 3): point 3.25 clamps to 3
    np.testing.assert_allclose(w[:, 0, 0, 0], [1, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(w[:, 1, 0, 3], [0, 0, 0, 1], atol=1e-6)
    # anchor (3, 0): region [-2, 5], bins of 3.5, 4 points each; -1.5625 (< -1) reads 0
    assert w[:, 0, 3, 0].sum() == pytest.approx(0.75)


def test_bmn_interpolation_by_hand():
    w = _dense(bmn_bm_sampling(4, 2, 2))  # P=2 bins of Q=2 points
    # anchor (0, 1): points 0.5, 5/6, 7/6, 1.5 over region [0.5, 1.5]
    np.testing.assert_allclose(w[:, 0, 0, 1], [1 / 3, 2 / 3, 0, 0], atol=1e-6)
    np.testing.assert_allclose(w[:, 1, 0, 1], [0, 2 / 3, 1 / 3, 0], atol=1e-6)
    # anchor (0, 0): points -0.5 and -1/6 both land on index 0 (math.modf keeps the sign)
    np.testing.assert_allclose(w[:, 0, 0, 0], [1, 0, 0, 0], atol=1e-6)


@pytest.mark.parametrize("sampling", [gtad_sgalign_sampling(20, 32), gtad_sgalign_sampling(20, 4), bmn_bm_sampling(20)])
def test_matrix_columns_sum_to_one_inside_and_zero_for_invalid(sampling):
    t = sampling.temporal_dim
    sums = _dense(sampling).sum(axis=0)  # (P, D, S)
    valid = valid_anchor_mask(t)
    assert np.all(sums[:, ~valid] == 0)
    # anchors whose extended region stays inside [0, T-1]: every bin is a convex combination
    d, s = np.nonzero(valid)
    inside = (s - (d + 1) * 0.5 >= 0) & (s + d + (d + 1) * 0.5 <= t - 1)
    assert inside.sum() > 10
    np.testing.assert_allclose(sums[:, d[inside], s[inside]], 1.0, atol=1e-5)
    assert sums.max() <= 1 + 1e-5


def test_sgalign_split_conv_equals_conv_over_concatenated_map():
    torch.manual_seed(0)
    t, c = 6, 8
    head = build_head("gtad", in_channels=c, temporal_dim=t).double()
    x = torch.randn(2, 256, t, dtype=torch.float64)
    inner, outer = head.align(x)
    assert inner.shape == (2, 256 * 32, t, t) and outer.shape == (2, 256 * 4, t, t)
    full = torch.cat([inner.view(2, 256, 32, t, t), outer.view(2, 256, 4, t, t)], dim=2).view(2, 256 * 36, t, t)
    np.testing.assert_allclose(head._map_in(inner, outer).detach(), head.map_in(full).detach(), rtol=1e-9, atol=1e-9)
    # channel c * 32 + p of the inner map is x[c] sampled at point p (official order)
    direct = (x @ head.align.inner_matrix.double()).view(2, 256, 32, t, t)
    np.testing.assert_allclose(inner.view(2, 256, 32, t, t).detach(), direct.detach())


def test_invalid_anchors_do_not_change_valid_gtad_outputs():
    # G-TAD's map convolutions are all 1x1: a valid anchor depends on its own column only
    torch.manual_seed(0)
    head = build_head("gtad", in_channels=8, temporal_dim=6)
    x = torch.randn(1, 8, 6)
    out = head(x).confidence_map
    head.align.inner_matrix[:, ~torch.from_numpy(np.tile(valid_anchor_mask(6).reshape(-1), 32))] = 5.0
    again = head(x).confidence_map
    mask = torch.from_numpy(valid_anchor_mask(6))
    torch.testing.assert_close(again[..., mask], out[..., mask])


@pytest.mark.parametrize("name", ["gtad", "bmn"])
def test_checkpointed_map_is_equivalent_in_float64(name):
    # `+head`: the sampled map in checkpoint segments over durations (T = 12: pieces of 1-2)
    torch.manual_seed(0)
    head = build_head(name, in_channels=8, temporal_dim=12, extra_temporal_dims=(5,)).double()
    runs = []
    for checkpoint_map, t in ((False, 12), (True, 12), (False, 5), (True, 5)):
        head.checkpoint_map = checkpoint_map
        head.zero_grad(set_to_none=True)
        x = torch.randn(2, 8, t, dtype=torch.float64, generator=torch.Generator().manual_seed(t), requires_grad=True)
        out = head(x)
        (out.start.sum() + (out.confidence_map ** 2).sum()).backward()
        runs.append((out.confidence_map.detach(), x.grad, {n: p.grad for n, p in head.named_parameters()}))
    for plain, pieces in ((runs[0], runs[1]), (runs[2], runs[3])):
        torch.testing.assert_close(pieces[0], plain[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(pieces[1], plain[1], rtol=1e-12, atol=1e-12)
        for n, grad in plain[2].items():
            torch.testing.assert_close(pieces[2][n], grad, rtol=1e-12, atol=1e-12, msg=n)


def test_duration_pieces_cover_every_duration_once():
    assert duration_pieces(100, 10) == [slice(10 * i, 10 * i + 10) for i in range(10)]
    for t in (4, 7, 25, 50):
        covered = [d for piece in duration_pieces(t, 10) for d in range(t)[piece]]
        assert covered == list(range(t))


def test_gradients_flow_to_every_parameter():
    for name in ("gtad", "bmn"):
        head = build_head(name, in_channels=8, temporal_dim=8)
        out = head(torch.randn(1, 8, 8, requires_grad=True))
        (out.start.sum() + out.end.sum() + out.confidence_map.sum()).backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["gtad", "bmn"])
def test_cuda_matches_cpu(name):
    torch.manual_seed(0)
    head = build_head(name, in_channels=64, temporal_dim=50)
    x = torch.randn(2, 64, 50)
    with torch.no_grad():
        ref = head(x)
        cuda_head = head.to("cuda")
        assert cuda_head.align.inner_matrix.is_cuda if name == "gtad" else cuda_head.bm_layer.sample_matrix.is_cuda
        got = cuda_head(x.cuda())
        built = build_head(name, in_channels=64, temporal_dim=50, device="cuda")
    for a, b in zip(ref, got):
        torch.testing.assert_close(b.cpu(), a, rtol=0, atol=5e-3)  # cuDNN may use TF32
    for buf, buf_cpu in zip(built.buffers(), head.to("cpu").buffers()):
        torch.testing.assert_close(buf.cpu(), buf_cpu)


# -- one head, several temporal sizes (C-LoFi cycles T = 100, 25, 50) -------------------


@pytest.mark.parametrize("name", ["gtad", "bmn"])
def test_multi_t_head_equals_single_t_heads_with_the_same_weights(name):
    torch.manual_seed(0)
    multi = build_head(name, in_channels=8, temporal_dim=8, extra_temporal_dims=(4, 6))
    assert multi.temporal_dims == (8, 4, 6) and multi.temporal_dim == 8
    assert not any("matrix" in k for k in multi.state_dict())
    for t in (4, 6, 8):
        single = build_head(name, in_channels=8, temporal_dim=t)
        assert single.state_dict().keys() == multi.state_dict().keys()
        single.load_state_dict(multi.state_dict())  # strict: the matrices are not in it
        x = torch.randn(2, 8, t)
        with torch.no_grad():
            got, want = multi(x), single(x)
        assert got.start.shape == (2, t) and got.confidence_map.shape == (2, 2, t, t)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    multi.load_state_dict(build_head(name, in_channels=8, temporal_dim=6).state_dict())  # and back


@pytest.mark.parametrize("name", ["gtad", "bmn"])
def test_multi_t_head_rejects_a_size_it_was_not_built_for(name):
    head = build_head(name, in_channels=8, temporal_dim=8, extra_temporal_dims=(4, 6))
    with pytest.raises(OptionError, match=r"T = 5 but holds sampling matrices only for T in \{4, 6, 8\}"):
        head(torch.randn(1, 8, 5))
    single = build_head(name, in_channels=8, temporal_dim=8)  # the single-T head checks too
    with pytest.raises(OptionError, match=r"T = 6 .* only for T in \{8\}"):
        single(torch.randn(1, 8, 6))
    with FakeTensorMode():  # the check reads only the static shape
        fake = build_head(name, in_channels=8, temporal_dim=8, extra_temporal_dims=(4,))
        assert fake(torch.randn(1, 8, 4)).confidence_map.shape == (1, 2, 4, 4)
        with pytest.raises(OptionError, match="T = 7"):
            fake(torch.randn(1, 8, 7))


@pytest.mark.parametrize("name", ["gtad", "bmn"])
def test_extra_sizes_add_buffers_not_parameters(name):
    counts = [sum(p.numel() for p in build_head(name, in_channels=512, temporal_dim=100, extra_temporal_dims=extra,
                                                device="meta").parameters()) for extra in ((), (25, 50))]
    assert counts[0] == counts[1] == {"gtad": 5_584_772, "bmn": 5_000_068}[name]
    head = build_head(name, in_channels=512, temporal_dim=100, extra_temporal_dims=(25, 50), device="meta")
    assert {b.device.type for b in head.buffers()} == {"meta"}
    assert head(torch.empty(1, 512, 50, device="meta")).confidence_map.shape == (1, 2, 50, 50)
    # every buffer of a head is a sampling matrix, and all of them are listed
    names = constant_buffer_names(head)
    assert names == [n for n, _ in head.named_buffers()]
    per_t = {"gtad": 2, "bmn": 1}[name]
    assert len(names) == 3 * per_t and sum(n.endswith("_t25") for n in names) == per_t
    floats = sum(b.numel() for b in head.buffers())
    assert floats == {"gtad": 36, "bmn": 32}[name] * (100**3 + 25**3 + 50**3)


def test_multi_t_buffer_names_and_moves():
    head = build_head("gtad", in_channels=8, temporal_dim=8, extra_temporal_dims=(4,))
    assert constant_buffer_names(torch.nn.ModuleDict({"head": head})) == [
        "head.align.inner_matrix", "head.align.context_matrix",
        "head.align.inner_matrix_t4", "head.align.context_matrix_t4",
    ]
    single = build_head("gtad", in_channels=8, temporal_dim=4)
    torch.testing.assert_close(head.align.inner_matrix_t4, single.align.inner_matrix, rtol=0, atol=0)
    head = head.to(torch.float64)
    assert {b.dtype for b in head.buffers()} == {torch.float64}
    assert head(torch.randn(1, 8, 4, dtype=torch.float64)).start.dtype == torch.float64


@pytest.mark.parametrize(
    "extra, temporal_dims",
    [((), (8,)), ((8, 4, 4, 6), (8, 4, 6)), ([25, np.int64(50)], (8, 25, 50)), (range(4, 6), (8, 4, 5))],
)
def test_extra_temporal_dims_are_deduplicated_in_order(extra, temporal_dims):
    assert build_head("bmn", in_channels=8, temporal_dim=8, extra_temporal_dims=extra,
                      device="meta").temporal_dims == temporal_dims


@pytest.mark.parametrize(
    "extra, match",
    [
        ((4, 3), r"extra_temporal_dims must be integers >= 4, got 3 in \(4, 3\)"),
        ((4.0,), "extra_temporal_dims must be integers >= 4, got 4.0"),
        (25, "extra_temporal_dims must be a sequence of integers, got 25"),
        ("25", "extra_temporal_dims must be a sequence of integers, got '25'"),
    ],
)
def test_build_head_rejects_bad_extra_temporal_dims(extra, match):
    with pytest.raises(OptionError, match=match):
        build_head("gtad", in_channels=8, temporal_dim=8, extra_temporal_dims=extra)
