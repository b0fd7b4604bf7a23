"""BatchNorm statistics for an encoder that starts without pre-trained weights.

A randomly initialised ResNet has running statistics mean 0, variance 1: with BatchNorm
frozen (the default, see lofi.models.encoders) it is an un-normalised network whose
activations grow block after block. Before training (and for the frozen-encoder
baseline) we therefore estimate the running statistics on a few training clips, as a
data-dependent initialisation, and then keep them frozen. Pre-trained encoders keep
the statistics of their checkpoint."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn


@torch.no_grad()
def estimate_batchnorm_statistics(encoder: nn.Module, clips: Iterable[torch.Tensor], device: torch.device,
                                  *, norms: Sequence[nn.Module] | None = None) -> int:
    """Set the running mean/variance of every BatchNorm (or of `norms` only; the others
    keep their mode) to the average over `clips` ((B, TR, F, 3, SR, SR) batches);
    returns the number of clips used."""
    if norms is None:
        norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was_training = encoder.training
    momenta = [m.momentum for m in norms]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # cumulative moving average over all batches
        nn.Module.train(module, True)  # bypass the frozen-BN train() override
    used = 0
    try:
        for batch in clips:
            if batch.shape[0] == 0:
                continue
            encoder(batch.to(device))
            used += batch.shape[0]
    finally:
        for module, momentum in zip(norms, momenta):
            module.momentum = momentum
        encoder.train(was_training)  # frozen BN returns to eval behaviour
    return used
