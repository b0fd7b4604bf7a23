"""End to end: a TSM-R18 encoder and the G-TAD head learn one fixed clip's targets (the
loss falls by at least 90%), i.e. gradients flow from the TAL loss into the encoder."""

from __future__ import annotations

import numpy as np
import torch

from lofi.models.encoders import build_encoder
from lofi.models.heads import build_head
from lofi.models.labels import make_targets, targets_to_tensors, valid_anchor_mask
from lofi.models.losses import tal_loss

TR, FRAMES, SR = 8, 2, 32


def test_encoder_plus_gtad_overfit_one_clip():
    torch.manual_seed(0)
    encoder = build_encoder("tsm_r18")  # random init, frozen BN (the default)
    head = build_head("gtad", in_channels=encoder.out_channels, temporal_dim=TR)
    clip = torch.randint(0, 256, (1, TR, FRAMES, 3, SR, SR), dtype=torch.uint8)
    start_t, end_t, iou_t = targets_to_tensors([make_targets(np.array([[2.0, 5.0]]), 8.0, TR)])
    mask = torch.from_numpy(valid_anchor_mask(TR))
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    encoder.train()
    head.train()

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        out = head(encoder(clip))
        # the same PEM_reg sample every step: the loss is a fixed function of the weights
        loss = tal_loss(out, start_t, end_t, iou_t, mask, generator=torch.Generator().manual_seed(0)).total
        loss.backward()
        optimizer.step()
        return loss.item()

    first = step()
    losses = [first]
    while len(losses) < 200 and min(losses) > 0.1 * first:  # ~20 steps suffice (about 10 s)
        losses.append(step())
    assert np.isfinite(losses).all()
    assert min(losses) <= 0.1 * first, f"loss {first:.3f} -> {min(losses):.3f} after {len(losses)} steps"
    encoder_grad = sum(p.grad.abs().sum().item() for p in encoder.parameters() if p.grad is not None)
    assert encoder_grad > 0
