"""The temporal shift of TSM (Lin et al., ICCV 2019) against hand-computed values and a
slice-assignment reference written from the paper's description."""

from __future__ import annotations

import torch

from lofi.models.temporal_shift import ShiftBasicBlock, temporal_shift


def _reference_shift(x: torch.Tensor, n_segment: int, fold_div: int = 8) -> torch.Tensor:
    nt, c, h, w = x.shape
    x = x.view(nt // n_segment, n_segment, c, h, w)
    fold = c // fold_div
    out = torch.zeros_like(x)
    for t in range(n_segment):
        if t + 1 < n_segment:
            out[:, t, :fold] = x[:, t + 1, :fold]
        if t - 1 >= 0:
            out[:, t, fold : 2 * fold] = x[:, t - 1, fold : 2 * fold]
        out[:, t, 2 * fold :] = x[:, t, 2 * fold :]
    return out.view(nt, c, h, w)


def test_shift_matches_hand_computed_example():
    # one snippet, 3 frames, 8 channels (fold = 1), 1x1 pixels; value = 10 * t + c
    x = torch.tensor([[10.0 * t + c for c in range(8)] for t in range(3)]).view(3, 8, 1, 1)
    expected = torch.tensor(
        [
            [10, 0, 2, 3, 4, 5, 6, 7],  # ch0 from t=1, ch1 has no t=-1 -> 0
            [20, 1, 12, 13, 14, 15, 16, 17],  # ch0 from t=2, ch1 from t=0
            [0, 11, 22, 23, 24, 25, 26, 27],  # ch0 has no t=3 -> 0, ch1 from t=1
        ],
        dtype=torch.float32,
    ).view(3, 8, 1, 1)
    out = temporal_shift(x, n_segment=3)
    assert torch.equal(out, expected)
    assert torch.equal(x, torch.tensor([[10.0 * t + c for c in range(8)] for t in range(3)]).view(3, 8, 1, 1))


def test_shift_matches_reference_and_keeps_snippets_apart():
    torch.manual_seed(0)
    x = torch.randn(3 * 4, 16, 2, 3)  # 3 snippets of 4 frames, fold = 2
    out = temporal_shift(x, n_segment=4)
    assert torch.equal(out, _reference_shift(x, 4))
    # changing snippet 0 leaves snippets 1 and 2 untouched
    y = x.clone()
    y[:4] += 100.0
    assert torch.equal(temporal_shift(y, 4)[4:], out[4:])


def test_single_frame_zeroes_shifted_channels():
    x = torch.randn(2, 16, 2, 2)
    out = temporal_shift(x, n_segment=1)
    assert torch.count_nonzero(out[:, :4]) == 0
    assert torch.equal(out[:, 4:], x[:, 4:])


def test_shift_gradient_is_the_opposite_shift():
    x = torch.randn(6, 8, 1, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: temporal_shift(t, 3), (x,))


def test_shift_block_shifts_only_the_residual_branch():
    torch.manual_seed(0)
    block = ShiftBasicBlock(16, 16).eval()
    x = torch.randn(2 * 3, 16, 4, 4)
    out = block(x, 3)
    expected = torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(_reference_shift(x, 3)))))) + x)
    assert torch.allclose(out, expected, atol=1e-6)
    # and the shift matters: the unshifted computation differs
    plain = torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x))))) + x)
    assert not torch.allclose(out, plain)
