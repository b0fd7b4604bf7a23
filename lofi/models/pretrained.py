"""Load a local pre-trained checkpoint into a video encoder.

Accepted layouts (the file is read with `torch.load(weights_only=True)`):

- torchvision: a plain state dict with torchvision's key names, e.g. an ImageNet ResNet
  (`conv1.weight`, `bn1.running_mean`, `layer1.0.conv1.weight`, ..., `fc.weight`) or a
  Kinetics R(2+1)D-18 (`stem.0.weight`, ..., `fc.weight`). A `module.` prefix
  (DataParallel) is accepted.
- TSM (mit-han-lab/temporal-shift-module, `main.py` `save_checkpoint`): a dict whose
  `state_dict` entry holds the DataParallel-wrapped TSN model: `module.base_model.<resnet
  key>`, where the residual shift wraps each block's first conv, so the conv's weight is
  `module.base_model.layer1.0.conv1.net.weight` (`ops/temporal_shift.py`, `TemporalShift.net`),
  and the classifier is `module.new_fc.*` (or `module.base_model.fc.*` when trained
  without dropout).

Classifier weights (`fc.*`, `new_fc.*`) are ignored and listed in the report. BatchNorm
`num_batches_tracked` may be absent (old torchvision files). Anything else that does not
match the encoder exactly -- missing keys, unexpected keys, other shapes -- is a
CheckpointError that names the file and the first offending keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lofi.errors import CheckpointError

_CLASSIFIERS = ("fc", "new_fc")
_SHOWN = 5  # offending keys named in an error message


@dataclass(frozen=True)
class PretrainedReport:
    """What `load_pretrained` did: the file, its layout ('torchvision' or 'tsm'), how
    many tensors were loaded and which keys were ignored (the classifier)."""

    path: str
    layout: str
    loaded: int
    ignored: tuple[str, ...]


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f" (and {len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def read_checkpoint(path: str | os.PathLike) -> Mapping[str, object]:
    """The raw dict stored in `path` (tensors on the CPU); I/O only."""
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"pretrained checkpoint {file} does not exist (or is not a file)")
    try:
        raw = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to unpickle a foreign file is the file's fault
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"pretrained checkpoint {file} cannot be read as a weights-only torch file "
            f"({type(exc).__name__}: {first_line})"
        ) from None
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"pretrained checkpoint {file} holds a {type(raw).__name__}, not a state dict")
    return raw


def translate_keys(raw: Mapping[str, object], path: str) -> tuple[dict[str, torch.Tensor], str, tuple[str, ...]]:
    """Raw checkpoint dict -> (state dict in the encoder's key names, layout, ignored keys).
    Pure: no file access, no model."""
    inner = raw.get("state_dict")
    state = inner if isinstance(inner, Mapping) else raw  # TSM wraps it; torchvision does not
    not_tensors = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not state or not_tensors:
        detail = f"non-tensor entries {_first(not_tensors)}" if not_tensors else "no entries"
        raise CheckpointError(f"pretrained checkpoint {path} is not a state dict: {detail}")
    layout = "torchvision"
    out: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for key, value in state.items():
        name = key.removeprefix("module.")
        if name.startswith("base_model.") or name.startswith("new_fc."):
            layout = "tsm"
            name = name.removeprefix("base_model.")
            name = name.replace(".net.", ".")  # TemporalShift(conv).net.weight -> conv.weight
        if name.split(".", 1)[0] in _CLASSIFIERS:
            ignored.append(key)
            continue
        out[name] = value  # type: ignore[assignment]
    return out, layout, tuple(ignored)


def check_against(encoder: nn.Module, state: Mapping[str, torch.Tensor], path: str) -> None:
    """CheckpointError unless `state` has exactly the encoder's keys and shapes
    (`num_batches_tracked` may be missing)."""
    expected = encoder.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    name = getattr(encoder, "name", type(encoder).__name__)
    problems = []
    if missing:
        problems.append(f"missing keys {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_first(unexpected)}")
    if wrong_shape:
        problems.append(f"shape mismatches {_first(wrong_shape)}")
    if problems:
        raise CheckpointError(f"pretrained checkpoint {path} does not fit encoder {name}: " + "; ".join(problems))


def load_pretrained(encoder: nn.Module, path: str | os.PathLike) -> PretrainedReport:
    """Copy the weights of checkpoint `path` into `encoder` (in its device and dtype).
    An encoder on the meta device has no storage: the file is checked, nothing copied."""
    raw = read_checkpoint(path)
    state, layout, ignored = translate_keys(raw, str(path))
    check_against(encoder, state, str(path))
    if not any(p.is_meta for p in encoder.parameters()):
        encoder.load_state_dict(state, strict=False)  # only num_batches_tracked may be absent
    return PretrainedReport(path=str(path), layout=layout, loaded=len(state), ignored=ignored)
