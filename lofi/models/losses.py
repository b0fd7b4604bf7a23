"""The TAL loss of BMN and G-TAD: total = TEM + 10 * PEM_reg + PEM_cls (PAPER.md; BMN
`loss_function.py::bmn_loss_func`, G-TAD `gtad_lib/loss_function.py::gtad_loss_func`).

* TEM: weighted binary cross-entropy on start and end, positives = target > 0.5, weights
  0.5 * N / N_pos and 0.5 * N / N_neg, log(p + 1e-6) and log(1 - p + 1e-6), mean over
  the batch's N entries; start and end terms added.
* PEM_reg: squared error on the IoU map over a balanced sample: every anchor with IoU
  > 0.7, medium anchors (0.3, 0.7] kept with probability N_high / N_medium, low anchors
  (0, 0.3] with probability N_high / N_low (anchors with IoU exactly 0 are never used,
  as in the official code); 0.5 * sum(err^2 * w) / sum(w).
* PEM_cls: weighted binary cross-entropy over valid anchors, positives = IoU > 0.9,
  weights 0.5 * N / N_pos, 0.5 * N / N_neg, sum / N.

Deviations, all in cases where the official code divides by zero or samples outside its
mask: counts in denominators are clamped to >= 1 (no positives -> that term is 0, no
NaN); a medium/low anchor is sampled only if it is in its band (the official
`(u_mmask * rand) > 1 - r_m` also takes anchors outside the band once r_m > 1).

Everything is computed in float32 (safe under autocast) with tensor ops only (no
`.item()`, no branching on values), so it also runs under FakeTensorMode."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from lofi.models.heads.output import HeadOutput

EPSILON = 1e-6  # official log epsilon
REG_WEIGHT = 10.0
TEM_POSITIVE = 0.5
PEM_HIGH, PEM_LOW = 0.7, 0.3
CLS_POSITIVE = 0.9


class LossTerms(NamedTuple):
    total: Tensor
    tem: Tensor
    pem_reg: Tensor
    pem_cls: Tensor


def _count(mask: Tensor) -> Tensor:
    return mask.sum().clamp(min=1.0)


def weighted_bce(pred: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
    """Balanced BCE summed over entries and divided by N = N_pos + N_neg; `positive` and
    `negative` are float {0, 1} masks of the same shape as `pred`."""
    n_pos, n_neg = positive.sum(), negative.sum()
    n = (n_pos + n_neg).clamp(min=1.0)
    coef_pos = 0.5 * n / n_pos.clamp(min=1.0)
    coef_neg = 0.5 * n / n_neg.clamp(min=1.0)
    loss = coef_pos * torch.log(pred + EPSILON) * positive + coef_neg * torch.log(1.0 - pred + EPSILON) * negative
    return -loss.sum() / n


def tem_loss(start: Tensor, end: Tensor, start_t: Tensor, end_t: Tensor) -> Tensor:
    """BMN tem_loss_func: balanced BCE on start plus on end (B, T) each."""

    def term(pred: Tensor, target: Tensor) -> Tensor:
        pos = (target > TEM_POSITIVE).float()
        return weighted_bce(pred, pos, 1.0 - pos)

    return term(start, start_t) + term(end, end_t)


def pem_reg_loss(pred: Tensor, iou_t: Tensor, mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """BMN pem_reg_loss_func with band-restricted sampling; pred, iou_t, mask (B, D, T)."""
    high = (iou_t > PEM_HIGH).float()
    medium = ((iou_t <= PEM_HIGH) & (iou_t > PEM_LOW)).float()
    low = ((iou_t <= PEM_LOW) & (iou_t > 0.0)).float() * mask
    n_high = high.sum()
    keep_medium = n_high / _count(medium)
    keep_low = n_high / _count(low)
    draw_m = torch.rand(iou_t.shape, generator=generator, device=iou_t.device)
    draw_l = torch.rand(iou_t.shape, generator=generator, device=iou_t.device)
    weights = high + medium * (draw_m > 1.0 - keep_medium).float() + low * (draw_l > 1.0 - keep_low).float()
    return 0.5 * ((pred - iou_t) ** 2 * weights).sum() / _count(weights)


def pem_cls_loss(pred: Tensor, iou_t: Tensor, mask: Tensor) -> Tensor:
    """BMN pem_cls_loss_func: balanced BCE over valid anchors, positives IoU > 0.9."""
    pos = (iou_t > CLS_POSITIVE).float() * mask
    neg = (iou_t <= CLS_POSITIVE).float() * mask
    return weighted_bce(pred, pos, neg)


def tal_loss(
    output: HeadOutput,
    start_t: Tensor,
    end_t: Tensor,
    iou_map_t: Tensor,
    mask: Tensor,
    *,
    generator: torch.Generator | None = None,
) -> LossTerms:
    """Loss of a head's output against targets start_t, end_t (B, T) and iou_map_t
    (B, T, T); mask (T, T) or (B, T, T), True/1 on valid anchors, a tensor or the numpy
    array of `lofi.models.labels.valid_anchor_mask`. `generator` makes PEM_reg's sampling
    deterministic (it must live on the targets' device)."""
    start, end = output.start.float(), output.end.float()
    reg, cls = output.confidence_map[:, 0].float(), output.confidence_map[:, 1].float()  # (B, D, T)
    mask = torch.as_tensor(mask, device=reg.device).to(torch.float32).expand_as(reg)
    iou_t = iou_map_t.to(reg.device).float() * mask
    tem = tem_loss(start, end, start_t.to(start.device).float(), end_t.to(end.device).float())
    reg_loss = pem_reg_loss(reg, iou_t, mask, generator)
    cls_loss = pem_cls_loss(cls, iou_t, mask)
    total = tem + REG_WEIGHT * reg_loss + cls_loss
    return LossTerms(total=total, tem=tem, pem_reg=reg_loss, pem_cls=cls_loss)
