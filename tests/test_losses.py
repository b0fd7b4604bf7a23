"""TAL loss: agrees with the official BMN/G-TAD formulas, handles no-positive cases,
is masked, differentiable, deterministic with a generator, float32 under autocast and
traceable on fake tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from lofi.models.heads.output import HeadOutput
from lofi.models.labels import make_targets, targets_to_tensors, valid_anchor_mask
from lofi.models.losses import LossTerms, tal_loss

T = 12


def _targets(b: int = 2):
    segs = [np.array([[3.0, 7.0], [12.0, 20.0]]), np.array([[1.0, 9.0]])][:b]
    return targets_to_tensors([make_targets(s, 24.0, T) for s in segs])


def _output(b: int = 2, seed: int = 0, requires_grad: bool = False) -> HeadOutput:
    g = torch.Generator().manual_seed(seed)
    out = HeadOutput(torch.rand(b, T, generator=g), torch.rand(b, T, generator=g), torch.rand(b, 2, T, T, generator=g))
    return HeadOutput(*(x.requires_grad_(requires_grad) for x in out))


def _mask() -> torch.Tensor:
    return torch.from_numpy(valid_anchor_mask(T))


def _official(out: HeadOutput, start_t, end_t, iou_t, mask, seed: int):
    """The official bmn_loss_func (BMN/G-TAD loss_function.py) with torch.rand draws from
    a generator seeded like ours instead of np.random."""
    eps = 1e-6

    def bi_loss(p, y):
        p, y = p.reshape(-1), y.reshape(-1)
        pmask = (y > 0.5).float()
        ratio = len(pmask) / pmask.sum()
        c0, c1 = 0.5 * ratio / (ratio - 1), 0.5 * ratio
        return -torch.mean(c1 * torch.log(p + eps) * pmask + c0 * torch.log(1 - p + eps) * (1 - pmask))

    mask = mask.float()
    gt = iou_t * mask
    reg, cls = out.confidence_map[:, 0], out.confidence_map[:, 1]
    h = (gt > 0.7).float()
    m = ((gt <= 0.7) & (gt > 0.3)).float()
    lo = ((gt <= 0.3) & (gt > 0.0)).float() * mask
    g = torch.Generator().manual_seed(seed)
    sm = ((m * torch.rand(gt.shape, generator=g)) > 1 - h.sum() / m.sum()).float()
    sl = ((lo * torch.rand(gt.shape, generator=g)) > 1 - h.sum() / lo.sum()).float()
    w = h + sm + sl
    pem_reg = 0.5 * torch.sum((reg * w - gt * w) ** 2) / torch.sum(w)
    pmask, nmask = (gt > 0.9).float(), (gt <= 0.9).float() * mask
    n = pmask.sum() + nmask.sum()
    ratio = n / pmask.sum()
    c0, c1 = 0.5 * ratio / (ratio - 1), 0.5 * ratio
    pem_cls = -torch.sum(c1 * torch.log(cls + eps) * pmask + c0 * torch.log(1 - cls + eps) * nmask) / n
    tem = bi_loss(out.start, start_t) + bi_loss(out.end, end_t)
    return tem + 10 * pem_reg + pem_cls, tem, pem_reg, pem_cls


def test_matches_official_formulas():
    start_t, end_t, iou_t = _targets()
    out = _output()
    # the official sampling equals ours while there are fewer high than medium/low anchors
    gt = iou_t * _mask()
    high = (gt > 0.7).sum()
    assert 0 < high < ((gt > 0.3) & (gt <= 0.7)).sum() and high < ((gt > 0) & (gt <= 0.3)).sum()
    ours = tal_loss(out, start_t, end_t, iou_t, _mask(), generator=torch.Generator().manual_seed(7))
    ref = _official(out, start_t, end_t, iou_t, _mask(), seed=7)
    assert isinstance(ours, LossTerms)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.total, ours.tem + 10 * ours.pem_reg + ours.pem_cls)


def test_tem_by_hand():
    # 4 entries, 1 positive: weights 0.5*4/1 = 2 and 0.5*4/3 = 2/3; loss = -sum / 4
    p = torch.tensor([[0.8, 0.1, 0.3, 0.5]])
    y = torch.tensor([[0.9, 0.0, 0.4, 0.5]])  # 0.5 is not > 0.5: negative
    out = HeadOutput(p, torch.full_like(p, 0.5), torch.full((1, 2, 4, 4), 0.5))
    terms = tal_loss(out, y, torch.tensor([[1.0, 0, 0, 0]]), torch.zeros(1, 4, 4), torch.ones(4, 4))
    eps = 1e-6
    start = -(2 * np.log(0.8 + eps) + 2 / 3 * (np.log(0.9 + eps) + np.log(0.7 + eps) + np.log(0.5 + eps))) / 4
    end = -(2 * np.log(0.5 + eps) + 2 / 3 * 3 * np.log(0.5 + eps)) / 4
    assert terms.tem.item() == pytest.approx(start + end, rel=1e-5)


def test_no_positives_anywhere_is_finite():
    out = _output(requires_grad=True)
    zeros = torch.zeros(2, T)
    terms = tal_loss(out, zeros, zeros, torch.zeros(2, T, T), _mask())
    assert all(torch.isfinite(x) for x in terms)
    assert terms.pem_reg.item() == 0.0  # no high-IoU anchor: nothing sampled
    terms.total.backward()
    assert all(torch.isfinite(x.grad).all() for x in out)
    # all positive: the negative weights' counts are clamped too
    ones = torch.ones(2, T)
    assert torch.isfinite(tal_loss(out, ones, ones, torch.ones(2, T, T), _mask()).total)


def test_perfect_prediction_scores_lower_than_random():
    start_t, end_t, iou_t = _targets()
    perfect = HeadOutput(start_t, end_t, torch.stack([iou_t, (iou_t > 0.9).float()], dim=1))
    good = tal_loss(perfect, start_t, end_t, iou_t, _mask())
    bad = tal_loss(_output(), start_t, end_t, iou_t, _mask())
    assert good.pem_reg.item() == pytest.approx(0.0, abs=1e-7)
    assert good.total < 0.5 * bad.total


def test_invalid_anchors_are_ignored():
    start_t, end_t, iou_t = _targets()
    out = _output()
    changed = out.confidence_map.clone()
    invalid = ~_mask()
    changed[:, :, invalid] = torch.rand_like(changed[:, :, invalid])
    iou_changed = iou_t.clone()
    iou_changed[:, invalid] = 1.0  # targets there are masked out as well
    a = tal_loss(out, start_t, end_t, iou_t, _mask(), generator=torch.Generator().manual_seed(1))
    b = tal_loss(out._replace(confidence_map=changed), start_t, end_t, iou_changed, _mask(),
                 generator=torch.Generator().manual_seed(1))
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


def test_generator_makes_sampling_deterministic():
    start_t, end_t, iou_t = _targets()
    out = _output()
    runs = [tal_loss(out, start_t, end_t, iou_t, _mask(), generator=torch.Generator().manual_seed(3)).pem_reg
            for _ in range(2)]
    torch.testing.assert_close(runs[0], runs[1])
    others = {round(tal_loss(out, start_t, end_t, iou_t, _mask(), generator=torch.Generator().manual_seed(s))
                    .pem_reg.item(), 7) for s in range(8)}
    assert len(others) > 1  # the sample does depend on the draws


def test_float32_under_autocast_and_low_precision_inputs():
    start_t, end_t, iou_t = _targets()
    out = HeadOutput(*(x.to(torch.bfloat16) for x in _output()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = tal_loss(out, start_t, end_t, iou_t, _mask().unsqueeze(0).expand(2, T, T))
    assert all(x.dtype == torch.float32 and torch.isfinite(x) for x in terms)


def test_runs_on_fake_tensors():
    with FakeTensorMode():
        out = HeadOutput(torch.rand(2, T, requires_grad=True), torch.rand(2, T), torch.rand(2, 2, T, T))
        # the mask may be the numpy array itself; a real generator is accepted
        terms = tal_loss(out, torch.rand(2, T), torch.rand(2, T), torch.rand(2, T, T), valid_anchor_mask(T),
                         generator=torch.Generator().manual_seed(0))
        terms.total.backward()
        assert terms.total.shape == () and out.start.grad.shape == (2, T)
