"""CUDA autocast's casting rules, emulated on tensors that are not CUDA tensors.

The planner traces on meta / fake CPU tensors, where `torch.autocast("cuda")` does
nothing (autocast only casts CUDA tensors, and a CPU-only machine disables it). This
module applies the same rules at the same level: a TorchFunctionMode sees the Python
surface of every call (`F.conv2d`, `x @ w`, `x.sum()`, ...) *above* autograd, exactly
where CUDA autocast intervenes ("Option 2: patch the Python-exposed surface",
aten/src/ATen/autocast_mode.h), so the casts are recorded by autograd, saved tensors of
lower-precision ops are 2-byte, and gradients flow back through the casts.

Op lists: `AT_FORALL_LOWER_PRECISION_FP`, `AT_FORALL_FP32`, `AT_FORALL_FP32_SET_OPT_DTYPE`,
`AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE` and `AT_FORALL_PROMOTE` of
aten/src/ATen/autocast_mode.h (PyTorch 2.x), plus the Python-level names of the torch.amp
docs ("CUDA Ops that can autocast to float16 / float32", e.g. `__matmul__`, `__rdiv__`,
`cross_entropy`, `normalize`, `softmin`). `binary_cross_entropy` is banned under CUDA
autocast (it raises); so does the emulation. tests/test_trace.py checks these tables
against the real AutocastCUDA kernels of the installed torch (on fake CUDA tensors).

Semantics kept from autocast_mode.cpp/h:
* only out-of-place calls without `out=` are eligible; float64 and non-float tensors are
  never cast;
* lower_precision_fp: all eligible tensor arguments -> fp16/bf16; a cast of an fp32
  leaf that requires grad (a parameter) is cached until the autocast region ends
  (`cached_cast`: the cached copy is what conv/linear save for backward);
* fp32: eligible arguments -> fp32; fp32_set_opt_dtype: `dtype=float32` unless a dtype
  is given (first argument eligible); promote: the widest eligible float type;
* backward runs without autocast, except inside a checkpoint recomputation, which
  re-enters autocast (torch.utils.checkpoint restores the forward's autocast state);
  here: a call made during backward with grad mode on is a recomputation.

Known differences from CUDA: recomputation casts parameters again per call instead of
per recomputed segment (the same when every weight is used once per segment);
`softmax(half, dtype=float32)` on CUDA reads the half input directly, elsewhere it makes
an fp32 copy first (a temporary only in the trace).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

LOWER_PRECISION = frozenset(
    {
        # AT_FORALL_LOWER_PRECISION_FP (+ cudnn_convolution*)
        "_convolution", "conv1d", "conv2d", "conv3d", "conv_tbc", "conv_transpose1d",
        "conv_transpose2d", "conv_transpose3d", "convolution", "prelu", "addmm", "addmv",
        "addr", "matmul", "einsum", "mm", "mv", "linalg_vecdot", "vecdot", "linear", "addbmm",
        "baddbmm", "bmm", "chain_matmul", "linalg_multi_dot", "multi_dot", "lstm_cell",
        "gru_cell", "rnn_tanh_cell", "rnn_relu_cell", "scaled_dot_product_attention",
        # Python surface (torch.amp docs)
        "__matmul__", "__rmatmul__",
    }
)

FP32 = frozenset(
    {
        # AT_FORALL_FP32
        "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p",
        "reciprocal", "rsqrt", "sinh", "tan", "pow", "softplus", "layer_norm",
        "native_layer_norm", "group_norm", "frobenius_norm", "nuclear_norm",
        "cosine_similarity", "poisson_nll_loss", "cosine_embedding_loss", "nll_loss",
        "nll_loss2d", "hinge_embedding_loss", "kl_div", "l1_loss", "smooth_l1_loss",
        "huber_loss", "mse_loss", "margin_ranking_loss", "multilabel_margin_loss",
        "soft_margin_loss", "triplet_margin_loss", "multi_margin_loss",
        "binary_cross_entropy_with_logits", "dist", "pdist", "cdist", "renorm", "logsumexp",
        "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d",
        "upsample_linear1d", "upsample_bilinear2d", "upsample_trilinear3d", "upsample_bicubic2d",
        # Python surface (torch.amp docs): dunder pow/div, composite losses, interpolate
        "__pow__", "__rpow__", "__rdiv__", "__rtruediv__", "cross_entropy", "normalize",
        "interpolate", "upsample", "upsample_nearest", "upsample_bilinear",
    }
)

FP32_SET_OPT_DTYPE = frozenset(
    {
        # AT_FORALL_FP32_SET_OPT_DTYPE, and norm (fp32_append_dtype: output in fp32)
        "prod", "softmax", "log_softmax", "cumprod", "cumsum", "linalg_vector_norm",
        "vector_norm", "linalg_matrix_norm", "matrix_norm", "sum", "norm",
        # Python surface: softmin is softmax(-x) with the same dtype argument
        "softmin",
    }
)

PROMOTE = frozenset(
    {
        # AT_FORALL_PROMOTE (grid_sample is the Python name of grid_sampler)
        "addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "vdot", "grid_sampler",
        "grid_sample", "index_put", "tensordot", "scatter_add",
    }
)

BANNED = frozenset({"binary_cross_entropy"})

BANNED_MESSAGE = (
    "torch.nn.functional.binary_cross_entropy and torch.nn.BCELoss are unsafe to autocast "
    "(CUDA autocast raises here); use binary_cross_entropy_with_logits, or compute the loss "
    "in float32 outside the autocast region"
)

LOWER_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


POLICIES: dict[str, str] = {
    **dict.fromkeys(LOWER_PRECISION, "lower"),
    **dict.fromkeys(FP32, "fp32"),
    **dict.fromkeys(FP32_SET_OPT_DTYPE, "fp32_set_opt_dtype"),
    **dict.fromkeys(PROMOTE, "promote"),
    **dict.fromkeys(BANNED, "banned"),
}


def policy_of(name: str) -> str | None:
    """The autocast policy of a Python-level function name, or None (runs as is)."""
    return POLICIES.get(name)


class AutocastBannedError(RuntimeError):
    """An op that CUDA autocast refuses ran inside the emulated autocast region."""


def _eligible(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64


class CudaAutocastEmulation(TorchFunctionMode):
    """Push it for the whole training step; `region()` marks the forward/loss part that
    runs under `torch.autocast("cuda", dtype)`."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        if dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"autocast dtype must be float16 or bfloat16, got {dtype}")
        self.dtype = dtype
        self._in_region = False
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(param) -> (param, cast)

    @contextmanager
    def region(self) -> Iterator[None]:
        self._in_region = True
        try:
            yield
        finally:
            self._in_region = False
            self._cache.clear()  # autocast clears its cast cache when the region exits

    def _active(self) -> bool:
        if self._in_region:
            return True
        # In backward, Python-level calls with grad mode on are checkpoint recomputations.
        return torch._C._current_graph_task_id() != -1 and torch.is_grad_enabled()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        policy = POLICIES.get(getattr(func, "__name__", ""))
        if policy is None or "out" in kwargs or not self._active():
            return func(*args, **kwargs)
        if policy == "banned":
            raise AutocastBannedError(BANNED_MESSAGE)
        if policy == "fp32_set_opt_dtype":
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if _eligible(first) and kwargs.get("dtype") is None:
                kwargs = {**kwargs, "dtype": torch.float32}
            return func(*args, **kwargs)
        if policy == "lower":
            target = self.dtype
        elif policy == "fp32":
            target = torch.float32
        else:  # promote
            floats = [a for a in _flat(args, kwargs) if _eligible(a)]
            target = torch.float32 if any(a.dtype == torch.float32 for a in floats) else self.dtype
        cast = self._caster(target, cache=policy == "lower" and self._in_region)
        args = tuple(cast(a) for a in args)
        kwargs = {k: cast(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)

    def _caster(self, target: torch.dtype, *, cache: bool):
        def cast(value: Any) -> Any:
            if isinstance(value, (list, tuple)):
                return type(value)(cast(v) for v in value)
            if not _eligible(value) or value.dtype == target:
                return value
            if cache and value.dtype == torch.float32 and value.requires_grad and value.is_leaf:
                hit = self._cache.get(id(value))
                if hit is not None and hit[0] is value:
                    return hit[1]
                casted = value.to(target)
                self._cache[id(value)] = (value, casted)
                return casted
            return value.to(target)

        return cast


def _flat(args: tuple, kwargs: dict) -> Iterator[Any]:
    for value in (*args, *kwargs.values()):
        if isinstance(value, (list, tuple)):
            yield from value
        else:
            yield value
