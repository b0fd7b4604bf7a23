"""Mixed precision by name: fp32, fp16 (autocast + GradScaler, e.g. V100) or bf16
(autocast without a scaler, on GPUs that have it)."""

from __future__ import annotations

import contextlib

import torch

from lofi.errors import OptionError

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def autocast(device: torch.device, precision: str):
    """The autocast context for `precision` on `device` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in _DTYPES:
        raise OptionError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 (bf16 and fp32 need none); a disabled
    scaler passes losses and steps through unchanged, so the loop has one code path."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def check_precision(device: torch.device, precision: str) -> None:
    """fp16/bf16 need a GPU that supports them; the CPU trains in fp32."""
    if precision == "fp32":
        return
    if device.type != "cuda":
        raise OptionError(f"precision {precision} needs a CUDA GPU; the CPU trains in fp32")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise OptionError(f"{torch.cuda.get_device_name(device)} has no bf16; use fp16 or fp32")
