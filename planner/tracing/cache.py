"""Traces on disk, so that planning the same grid again (another target GPU, another
number of GPUs) traces nothing. One .npz file per trace, named by a hash of everything
the trace depends on: the workload's key, the step (model spec, precision, optimizer,
target), the batch size, the torch version, the trace format and a hash of the tracing
code itself (so a changed tracer never reads old traces). Writes are atomic
(temporary file in the same folder, fsync, os.replace); a file that cannot be read, or
whose stored key differs, is ignored (and replaced by the next write).

Location: $LOFI_CACHE/traces, else $XDG_CACHE_HOME/lofi/traces, else ~/.cache/lofi/traces.
"""

from __future__ import annotations

import hashlib
import io
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from planner.atomic_files import atomic_write
from planner.cache_root import cache_root
from planner.tracing.recorder import TRACE_FORMAT, Trace
from planner.workload import StepSpec

_ARRAYS = ("ops", "ids", "sizes", "categories")


def default_root() -> Path:
    return cache_root() / "traces"


def trace_key(workload_key: str, step: StepSpec, batch_size: int) -> str:
    """A stable description of what a trace depends on (hashed into the file name)."""
    m = step.traced().model
    parts = {
        "workload": workload_key,
        "backbone": m.backbone,
        "head": m.head,
        "fidelity": [m.fidelity.tr, m.fidelity.sr, m.fidelity.frames_per_snippet],
        "checkpointing": m.checkpointing,
        "batchnorm": m.batchnorm,
        "precision": step.traced_precision,
        "optimizer": step.optimizer,
        "target": step.target,
        "batch": batch_size,
        "torch": torch.__version__,
        "format": TRACE_FORMAT,
        "tracer": _tracer_source_hash(),
    }
    return json.dumps(parts, sort_keys=True)


@lru_cache(maxsize=1)
def _tracer_source_hash() -> str:
    planner = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for name in ("tracing/recorder.py", "tracing/step.py", "tracing/meta_kernels.py", "tracing/autocast.py",
                 "tracing/block_costs.py", "workload.py"):
        digest.update((planner / name).read_bytes())
    return digest.hexdigest()[:12]


class TraceCache:
    """Memory and (unless `root` is None) disk cache of traces."""

    def __init__(self, root: Path | str | None) -> None:
        self.root = Path(root) if root is not None else None
        self._memory: dict[str, Trace] = {}

    @classmethod
    def default(cls) -> TraceCache:
        return cls(default_root())

    @classmethod
    def in_memory(cls) -> TraceCache:
        return cls(None)

    def path(self, key: str) -> Path | None:
        if self.root is None:
            return None
        return self.root / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.npz"

    def has(self, key: str) -> bool:
        """Whether a trace for `key` is in memory or on disk (not read)."""
        path = self.path(key)
        return key in self._memory or (path is not None and path.is_file())

    def get(self, key: str) -> Trace | None:
        if key in self._memory:
            return self._memory[key]
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        trace = _read(path, key)
        if trace is not None:
            self._memory[key] = trace
        return trace

    def put(self, key: str, trace: Trace) -> None:
        self._memory[key] = trace
        path = self.path(key)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(path, _encode(key, trace))
        except OSError:
            pass  # a cache that cannot be written only costs time


def _encode(key: str, trace: Trace) -> bytes:
    meta = {
        "key": key,
        "marks": trace.marks,
        "flops": trace.flops,
        "grad_bytes": trace.grad_bytes,
        "carry": trace.carry,
        "batch_size": trace.batch_size,
        "stub_units": trace.stub_units,
        "units_per_period": trace.units_per_period,
        "host_sizes": trace.host_sizes,
    }
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
             **{name: getattr(trace, name) for name in _ARRAYS})
    return buffer.getvalue()


def _read(path: Path, key: str) -> Trace | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes().decode())
            if meta["key"] != key:
                return None
            arrays = {name: np.array(data[name]) for name in _ARRAYS}
        return Trace(
            **arrays,
            marks=tuple((str(label), int(i)) for label, i in meta["marks"]),
            flops=tuple((str(label), float(v)) for label, v in meta["flops"]),
            grad_bytes=tuple(int(b) for b in meta["grad_bytes"]),
            carry=tuple(int(b) for b in meta["carry"]),
            batch_size=int(meta["batch_size"]),
            stub_units=int(meta["stub_units"]),
            units_per_period=int(meta["units_per_period"]),
            host_sizes=tuple(int(b) for b in meta.get("host_sizes", ())),
        )
    except Exception:  # corrupt, truncated, foreign or older file: ignore it
        return None


def _write_atomic(path: Path, payload: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(payload))
