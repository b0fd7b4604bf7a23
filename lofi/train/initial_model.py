"""The models a run starts from: the LoFi model (encoder + head) and the baseline's
frozen encoder, with BatchNorm statistics for an encoder that starts without pre-trained
weights; and the training videos they are made from.

A randomly initialised ResNet has running statistics mean 0, variance 1: with BatchNorm
frozen (the default, see lofi.models.encoders) it is an un-normalised network whose
activations grow block after block. Before training (and for the frozen-encoder
baseline) we therefore estimate the running statistics on a few training clips, as a
data-dependent initialisation, and then keep them frozen. Pre-trained encoders keep
the statistics of their checkpoint."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from lofi.data.annotations import VideoRecord
from lofi.data.dataset import VideoDataset, collate_clips
from lofi.data.media_source import MediaSource
from lofi.data.transforms import Augment
from lofi.models.encoders import VideoEncoder, build_encoder
from lofi.models.lofi_model import LoFiModel, build_lofi_model
from lofi.train.config import TrainConfig, encoder_bn_mode
from planner.candidate import Candidate
from planner.fidelity import Fidelity

BN_CLIPS = 16  # training clips used to estimate BatchNorm statistics of a random encoder


@dataclass(frozen=True)
class Videos:
    """Videos a stage trains on or embeds: their records (with readable media), where
    their media are, and the dataset's class names."""

    records: tuple[VideoRecord, ...]
    media: Mapping[str, MediaSource]
    classes: tuple[str, ...]

    def subset(self, name: str) -> Videos:
        """The videos of one annotation subset ("training", "validation", ...)."""
        return Videos(tuple(r for r in self.records if r.subset == name), self.media, self.classes)


def video_dataset(config: TrainConfig, videos: Videos, fidelity: Fidelity, *,
                  augment: Augment | bool) -> VideoDataset:
    return VideoDataset(list(videos.records), videos.media, fidelity, list(videos.classes), augment=augment,
                        seed=config.seed, stride=config.data.stride)


def initial_lofi_model(config: TrainConfig, candidate: Candidate, training: Videos,
                       device: torch.device) -> LoFiModel:
    """The model before the LoFi stage: encoder (pre-trained, or random with estimated BN
    statistics), head at each TR of the candidate; the same seed gives the same start."""
    torch.manual_seed(config.seed)
    model = build_lofi_model(config.backbone, config.head, [f.tr for f in candidate.fidelities],
                             pretrained=config.pretrained, bn_mode=encoder_bn_mode(config),
                             checkpointing=candidate.checkpointing, device=device)
    if config.pretrained is None:
        init_batchnorm(model.encoder, config, training, device)
    return model


def baseline_encoder(config: TrainConfig, training: Videos, device: torch.device) -> VideoEncoder:
    """The baseline's (ACP) encoder: the pre-trained one (or a random one with estimated
    BN statistics), BatchNorm frozen."""
    torch.manual_seed(config.seed)
    encoder = build_encoder(config.backbone, pretrained=config.pretrained, freeze_bn=True, device=device)
    if config.pretrained is None:
        init_batchnorm(encoder, config, training, device)
    return encoder


def init_batchnorm(encoder: VideoEncoder, config: TrainConfig, training: Videos, device: torch.device, *,
                   only_first: bool = False) -> None:
    """BatchNorm statistics of `encoder` (of its first BatchNorm only: TSM's partialBN)
    estimated on the first BN_CLIPS training clips at full fidelity."""
    dataset = video_dataset(config, training, config.data.full_fidelity, augment=False)
    loader = DataLoader(Subset(dataset, range(min(BN_CLIPS, len(dataset)))), batch_size=1,
                        collate_fn=collate_clips)
    policy = encoder.grad_checkpointing
    encoder.set_grad_checkpointing("none")
    norms = encoder.batchnorms()[:1] if only_first else None
    estimate_batchnorm_statistics(encoder, (batch.clips for batch in loader), device, norms=norms)
    encoder.set_grad_checkpointing(policy)


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
