"""Memoized meta kernels for tracing.

On the meta device an op's outputs are a pure function of its inputs' metadata (shape,
stride, offset, dtype) and its other arguments. PyTorch implements many meta kernels in
Python (batch norm, foreach ops, elementwise refs) and a training step repeats the same
shapes often (residual blocks, chunks, their recomputation), so a functional op (no
aliasing or mutation in its schema, no output sharing an input's storage) seen before
with the same metadata gets fresh outputs of the recorded metadata without running its
kernel. tests/test_trace.py checks that traces are identical with and without.
"""

from __future__ import annotations

import torch

class MetaKernelCache:
    """`cache(func, args, kwargs)` runs `func` or reuses the outputs' recorded metadata."""

    def __init__(self) -> None:
        self._entries: dict[tuple, object] = {}
        self._ops: dict[object, bool] = {}
        self.hits = self.misses = 0

    def __call__(self, func, args: tuple, kwargs: dict):
        if not self._cacheable_op(func):
            return func(*args, **kwargs)
        try:
            key = (func, _meta_key(args), _meta_key(kwargs))
            entry = self._entries.get(key)
        except _NotCacheable:
            return func(*args, **kwargs)
        if entry is None:
            self.misses += 1
            out = func(*args, **kwargs)
            if _aliases_input(out, args, kwargs):  # e.g. _unsafe_view: a view its schema hides
                self._ops[func] = False
                return out
            self._entries[key] = _template(out)
            return out
        if entry is _UNCACHEABLE:
            return func(*args, **kwargs)
        self.hits += 1
        return _materialize(entry)

    def _cacheable_op(self, func) -> bool:
        known = self._ops.get(func)
        if known is None:
            schema = func._schema
            known = not schema.is_mutable and all(
                r.alias_info is None and str(r.type) in _TENSOR_RETURNS for r in schema.returns
            ) and len(schema.returns) > 0
            self._ops[func] = known
        return known


# How a schema's return types print (torch._C.FunctionSchema: `Tensor[]` prints as
# List[Tensor], `Tensor?` as Optional[Tensor]): tensors, lists of them (the foreach ops)
# and optional tensors.
_TENSOR_RETURNS = ("Tensor", "List[Tensor]", "Optional[Tensor]")


class _NotCacheable(Exception):
    pass


_UNCACHEABLE = object()
_META = torch.device("meta")


def _meta_key(value):
    if isinstance(value, torch.Tensor):
        if value.device != _META or value.layout != torch.strided or type(value) is not torch.Tensor and not isinstance(value, torch.nn.Parameter):
            raise _NotCacheable
        return (tuple(value.shape), value.stride(), value.storage_offset(), value.dtype)
    if isinstance(value, (list, tuple)):
        return (type(value), tuple(_meta_key(v) for v in value))
    if isinstance(value, dict):
        return tuple((k, _meta_key(v)) for k, v in value.items())
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype, torch.device, torch.layout, torch.memory_format)):
        return value
    raise _NotCacheable


def _aliases_input(out, args: tuple, kwargs: dict) -> bool:
    inputs = {id(t.untyped_storage()) for t in _tensors((args, kwargs))}
    return any(id(t.untyped_storage()) in inputs for t in _tensors(out))


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _template(out):
    def one(t):
        if t is None:
            return None
        if not isinstance(t, torch.Tensor) or t.device != _META or t.storage_offset() != 0:
            raise _NotCacheable
        fresh = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=_META)
        if fresh.untyped_storage().nbytes() != t.untyped_storage().nbytes():
            raise _NotCacheable
        return (tuple(t.shape), t.stride(), t.dtype)

    try:
        if isinstance(out, (tuple, list)):
            return (type(out), tuple(one(t) for t in out))
        return one(out)
    except _NotCacheable:
        return _UNCACHEABLE


def _materialize(entry):
    if entry is None:
        return None
    if isinstance(entry[0], type):
        kind, items = entry
        return kind(_materialize(item) for item in items)
    size, stride, dtype = entry
    return torch.empty_strided(size, stride, dtype=dtype, device=_META)


META_KERNELS = MetaKernelCache()  # shared by the recorders of a process
