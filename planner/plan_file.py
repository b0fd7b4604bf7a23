"""plan.json: what the planner decided (`planner.plan`), and everything the trainer needs to
build the run.

A versioned schema (SCHEMA, VERSION). The plan's frozen dataclasses <-> JSON; saved atomically;
loaded strictly: an unknown or missing key, a wrong type or an inconsistent total is a
PlanFileError that names the field (e.g. `candidates[3].estimate.memory.activations`).
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from planner.atomic_files import atomic_write_text
from planner.candidate import Candidate
from planner.errors import PlanFileError
from planner.estimate_types import MemoryEstimate, TimeEstimate
from planner.fidelity import Fidelity
from planner.plan import Hardware, Measurement, Plan, PlanEntry, PlanScope
from planner.strict_json import Node as _Node
from planner.strict_json import kind as _kind
from planner.strict_json import read_json_document

SCHEMA = "lofi.plan"
VERSION = 2  # 2: needed capacity, unconstrained reserved peak, cache releases, expandable segments
MEASUREMENT_EXTRAS = ("needed_bytes", "alloc_retries", "context_bytes")  # optional in a result line


# --- dataclasses -> JSON -------------------------------------------------------------


def candidate_to_dict(candidate: Candidate) -> dict[str, Any]:
    single = candidate.fidelity
    return {
        "tr": single.tr if single else None,
        "sr": single.sr if single else None,
        "frames_per_snippet": single.frames_per_snippet if single else None,
        "cycle": [_fidelity_dict(f) for f in candidate.cycle] if candidate.cycle is not None else None,
        "backbone": candidate.backbone,
        "head": candidate.head,
        "batch_per_gpu": candidate.batch_per_gpu,
        "gpus": candidate.gpus,
        "nodes": candidate.nodes,
        "accumulation": candidate.accumulation,
        "precision": candidate.precision,
        "checkpointing": candidate.checkpointing,
        "optimizer": candidate.optimizer,
        "expandable_segments": candidate.expandable_segments,
        "batchnorm": candidate.batchnorm,
    }


def estimate_to_dict(memory: MemoryEstimate, time: TimeEstimate | None) -> dict[str, Any]:
    return {
        "total_bytes": memory.total,
        "memory": memory.as_dict(),
        "time": {f.name: getattr(time, f.name) for f in fields(time)} if time is not None else None,
    }


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    scope = plan.scope
    return {
        "schema": SCHEMA,
        "version": VERSION,
        "created": plan.created,
        "hardware": {f.name: getattr(scope.hardware, f.name) for f in fields(scope.hardware)},
        "gpus": scope.gpus,
        "nodes": scope.nodes,
        "margin": scope.margin,
        "usable_bytes": scope.usable_bytes,
        "global_batch": scope.global_batch,
        "dataset": {"videos_per_epoch": scope.videos_per_epoch, "source": scope.dataset},
        "chosen": candidate_to_dict(plan.chosen),
        "estimate": estimate_to_dict(plan.memory, plan.time),
        "why": plan.why,
        "notices": list(plan.notices),
        "candidates": [
            {
                "rank": e.rank,
                "candidate": candidate_to_dict(e.candidate),
                "fits": e.fits,
                "reason": e.reason,
                "quality": {"tier": e.quality_tier, "summary": e.quality, "paper_avg_map": e.paper_avg_map},
                "estimate": estimate_to_dict(e.memory, e.time),
                "measured": measurement_to_dict(e.measured) if e.measured else None,
            }
            for e in plan.candidates
        ],
    }


def save_plan(plan: Plan, path: str | os.PathLike) -> Path:
    """Write atomically: a temporary file beside `path`, fsync, rename."""
    return atomic_write_text(path, json.dumps(plan_to_dict(plan), indent=2) + "\n")


# --- JSON -> dataclasses (strict) ----------------------------------------------------


def load_plan(path: str | os.PathLike) -> Plan:
    document = read_json_document(path, PlanFileError, "plan file", missing_hint=" (run `lofi plan` to make one)")
    return plan_from_dict(document, str(path))


def plan_from_dict(document: Any, origin: str = "plan.json") -> Plan:
    root = _Node(document, origin, "")
    schema = root.str("schema")
    if schema != SCHEMA:
        raise PlanFileError(f"{origin}: schema is {schema!r}, not a lofi plan ({SCHEMA!r})")
    version = root.int("version")
    if version != VERSION:
        raise PlanFileError(f"{origin}: plan schema version {version}; this lofi reads version {VERSION} (run `lofi plan` again)")
    hw = root.obj("hardware")
    hardware = Hardware(hw.str("name"), hw.str("display_name"), hw.int("memory_bytes", minimum=1), hw.str("kind"), hw.bool("detected"))
    if hardware.kind not in ("gpu", "cpu"):
        raise hw.fail("kind", f"expected 'gpu' or 'cpu', got {hardware.kind!r}")
    hw.done()
    dataset = root.obj("dataset")
    videos, dataset_source = dataset.int("videos_per_epoch", minimum=1), dataset.str("source")
    dataset.done()
    memory, time = _estimate(root.obj("estimate"))
    candidates = tuple(_entry(node) for node in root.list("candidates"))
    if not candidates:
        raise PlanFileError(f"{origin}: candidates is empty")
    margin = root.float("margin")
    if not 0.0 <= margin < 1.0:
        raise PlanFileError(f"{origin}: margin must be in [0, 1), got {margin}")
    scope = PlanScope(
        hardware=hardware,
        gpus=root.int("gpus", minimum=1),
        nodes=root.int("nodes", minimum=1),
        margin=margin,
        usable_bytes=root.int("usable_bytes", minimum=1),
        global_batch=root.int("global_batch", minimum=1),
        videos_per_epoch=videos,
        dataset=dataset_source,
    )
    plan = Plan(
        scope=scope,
        chosen=_candidate(root.obj("chosen")),
        memory=memory,
        time=time,
        why=root.str("why"),
        candidates=candidates,
        notices=tuple(n.value_str() for n in root.list("notices")),
        created=root.str("created"),
    )
    root.done()
    if plan.chosen not in {entry.candidate for entry in candidates}:
        raise root.fail("chosen", "is none of the candidates (a plan trains one of the candidates it ranks)")
    return plan


def candidate_from_dict(document: Any, origin: str = "candidate") -> Candidate:
    """A candidate written by candidate_to_dict -> Candidate, strictly."""
    node = _Node(document, origin, "")
    if not isinstance(document, dict):
        raise node.fail(None, f"expected an object, got {_kind(document)}")
    return _candidate(node)


def measurement_from_dict(document: Any, origin: str = "measurement") -> Measurement:
    """A measuring subprocess's result (planner.measure_finalists) -> Measurement, strictly."""
    node = _Node(document, origin, "")
    if not isinstance(document, dict):
        raise node.fail(None, f"expected an object, got {_kind(document)}")
    return _measurement(node)


def measurement_to_dict(measurement: Measurement) -> dict[str, Any]:
    return {f.name: getattr(measurement, f.name) for f in fields(measurement)}


def _fidelity_dict(fidelity: Fidelity) -> dict[str, int]:
    return {"tr": fidelity.tr, "sr": fidelity.sr, "frames_per_snippet": fidelity.frames_per_snippet}


def _fidelity(node: _Node) -> Fidelity:
    try:
        fidelity = Fidelity(node.int("tr", 1), node.int("sr", 1), node.int("frames_per_snippet", 1))
    except ValueError as error:
        raise node.fail(None, str(error)) from error
    node.done()
    return fidelity


def _candidate(node: _Node) -> Candidate:
    cycle_nodes = None if node.get("cycle") is None else node.list("cycle")
    single = [node.get(k) for k in ("tr", "sr", "frames_per_snippet")]
    if cycle_nodes is not None:
        if any(v is not None for v in single):
            raise node.fail("cycle", "a cycle candidate has tr, sr and frames_per_snippet null")
        fidelity, cycle = None, tuple(_fidelity(n) for n in cycle_nodes)
        if not cycle:
            raise node.fail("cycle", "a cycle needs at least one fidelity")
    else:
        try:
            fidelity, cycle = Fidelity(node.int("tr", 1), node.int("sr", 1), node.int("frames_per_snippet", 1)), None
        except ValueError as error:
            raise node.fail(None, str(error)) from error
    try:
        candidate = Candidate(
            backbone=node.str("backbone"),
            head=node.str("head"),
            batch_per_gpu=node.int("batch_per_gpu", 1),
            fidelity=fidelity,
            cycle=cycle,
            gpus=node.int("gpus", 1),
            nodes=node.int("nodes", 1),
            accumulation=node.int("accumulation", 1),
            precision=node.str("precision"),
            checkpointing=node.str("checkpointing"),
            optimizer=node.str("optimizer"),
            expandable_segments=node.bool("expandable_segments"),
            batchnorm=node.str("batchnorm"),
        )
    except ValueError as error:
        raise node.fail(None, str(error)) from error
    node.done()
    return candidate


def _estimate(node: _Node) -> tuple[MemoryEstimate, TimeEstimate | None]:
    total = node.int("total_bytes")
    mem = node.obj("memory")
    memory = MemoryEstimate(
        **{k: mem.int(k) for k in ("parameters", "gradients", "optimizer_state", "activations", "workspace", "allocator_slack", "context")},
        ddp=mem.int("ddp", optional=True),
        nccl=mem.int("nccl", optional=True),
        source=mem.str("source"),
        calibration=mem.str("calibration", optional=True),
        reserved_slack=mem.int("reserved_slack", optional=True),
        cache_releases_per_step=mem.int("cache_releases_per_step"),
        host_pinned=mem.int("host_pinned") if "host_pinned" in mem.value else 0,  # plans before offload: 0
    )
    if memory.source not in ("estimated", "measured"):
        raise mem.fail("source", f"expected 'estimated' or 'measured', got {memory.source!r}")
    for derived in ("allocated_peak", "needed_capacity", "reserved_peak", "total"):
        if mem.int(derived) != getattr(memory, derived):
            raise mem.fail(derived, f"{mem.get(derived)} differs from the sum of its categories ({getattr(memory, derived)})")
    mem.done()
    if total != memory.total:
        raise node.fail("total_bytes", f"{total} differs from memory.total ({memory.total})")
    tnode = node.optional_obj("time")
    time = None
    if tnode is not None:
        time = TimeEstimate(
            flops_per_step=tnode.float("flops_per_step"),
            seconds_per_step=tnode.float("seconds_per_step"),
            seconds_per_epoch=tnode.float("seconds_per_epoch"),
            videos_per_epoch=tnode.int("videos_per_epoch", 1),
            cost_per_epoch_usd=tnode.float("cost_per_epoch_usd", optional=True),
            host_transfer_seconds=tnode.float("host_transfer_seconds") if "host_transfer_seconds" in tnode.value else 0.0,
        )
        tnode.done()
    node.done()
    return memory, time


def _entry(node: _Node) -> PlanEntry:
    quality = node.obj("quality")
    measured = node.optional_obj("measured")
    memory, time = _estimate(node.obj("estimate"))
    entry = PlanEntry(
        rank=node.int("rank", 1),
        candidate=_candidate(node.obj("candidate")),
        memory=memory,
        time=time,
        fits=node.bool("fits"),
        reason=node.str("reason", optional=True),
        quality_tier=quality.int("tier"),
        quality=quality.str("summary"),
        paper_avg_map=quality.float("paper_avg_map", optional=True),
        measured=_measurement(measured) if measured is not None else None,
    )
    quality.done()
    node.done()
    return entry


def _measurement(node: _Node) -> Measurement:
    measurement = Measurement(
        oom=node.bool("oom"),
        max_allocated_bytes=node.int("max_allocated_bytes", optional=True),
        max_reserved_bytes=node.int("max_reserved_bytes", optional=True),
        nvml_used_bytes=node.int("nvml_used_bytes", optional=True),
        step_seconds=node.float("step_seconds", optional=True),
        device=node.str("device", optional=True),
        error=node.str("error", optional=True),
        **{k: node.int(k, optional=True) for k in MEASUREMENT_EXTRAS if isinstance(node.value, dict) and k in node.value},
    )
    node.done()
    return measurement
