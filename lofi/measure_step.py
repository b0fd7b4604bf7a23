"""`python -m lofi.measure_step --candidate JSON`: run one candidate's real training step
on CUDA and print what it used, as one JSON line (planner.measure reads it).

Run by `lofi plan --measure`, one subprocess per candidate, so that an out-of-memory
error cannot leave the next candidate a fragmented allocator or a broken context. The
step is the planner's (planner/workload.py): the LoFi workload's model, optimizer and
batch (lofi.plan_workload), forward + loss under autocast, backward, optimizer step,
zero_grad. Two optimizer steps, each of up to two accumulation micro-steps (the peak is
reached in the first: later micro-steps repeat it), for each fidelity of a C-LoFi cycle.

Output: max_memory_allocated / max_memory_reserved (PyTorch), NVML's used memory of the
device minus what was used before this process touched CUDA, and `step_seconds`, the
optimizer step time (the timed micro-step x accumulation steps, plus the update).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

MICRO_STEPS = 2  # micro-steps run per optimizer step (the candidate may accumulate more)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lofi.measure_step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidate", required=True, help="a candidate as plan.json writes it")
    args = parser.parse_args(argv)
    try:
        result = measure(json.loads(args.candidate))
    except Exception as error:  # noqa: BLE001 - report anything as a result line, never a traceback
        result = {"oom": False, "error": f"{type(error).__name__}: {error}"}
    fields = ("oom", "max_allocated_bytes", "max_reserved_bytes", "nvml_used_bytes", "step_seconds", "device", "error")
    print(json.dumps({name: result.get(name) for name in fields}))
    return 0


def measure(document: dict) -> dict:
    from planner.plan_file import candidate_from_dict

    candidate = candidate_from_dict(document, "--candidate")
    baseline = _nvml_used(0)  # before this process creates a CUDA context
    import torch

    if not torch.cuda.is_available():
        return {"oom": False, "error": "CUDA is not available in the measuring process"}
    device = torch.device("cuda", 0)
    torch.cuda.reset_peak_memory_stats(device)
    name = torch.cuda.get_device_name(device)
    try:
        seconds = max(_run(candidate, spec, device) for spec in _steps(candidate))
    except torch.cuda.OutOfMemoryError:
        return {"oom": True, "device": name, **_peaks(torch, device, baseline)}
    return {"oom": False, "device": name, "step_seconds": seconds, **_peaks(torch, device, baseline)}


def _steps(candidate):
    from planner.workload import step_specs

    return step_specs(candidate, "cuda")


def _run(candidate, spec, device) -> float:
    """Two optimizer steps of `spec`; returns the second one's time for the full
    accumulation (seconds)."""
    import torch

    from lofi.plan_workload import lofi_workload

    workload = lofi_workload()
    model = workload.build_model(spec.model, device)
    optimizer = workload.make_optimizer(model, spec)
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(spec.precision)
    scaler = torch.amp.GradScaler("cuda") if spec.precision == "fp16" else None
    micro = min(candidate.accumulation, MICRO_STEPS)
    elapsed = 0.0
    for _ in range(2):
        torch.cuda.synchronize(device)
        started = time.perf_counter()
        for _ in range(micro):
            batch = _filled(workload.make_batch(spec, candidate.batch_per_gpu, device))
            with torch.autocast("cuda", dtype=half, enabled=half is not None):
                loss = workload.loss(model, batch)
            (scaler.scale(loss) if scaler else loss).backward()
        torch.cuda.synchronize(device)
        backward_done = time.perf_counter()
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        per_micro = (backward_done - started) / micro
        elapsed = per_micro * candidate.accumulation + (time.perf_counter() - backward_done)
    del model, optimizer
    return elapsed


def _filled(batch):
    """Valid values in the workload's (uninitialised) batch tensors: NaN targets would
    make the fp16 grad scaler skip the optimizer step, and its state with it."""
    import torch

    tensors = [getattr(batch, f.name) for f in dataclasses.fields(batch)] if dataclasses.is_dataclass(batch) else list(batch)
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            tensor.uniform_(0.0, 1.0)
        elif isinstance(tensor, torch.Tensor) and tensor.dtype == torch.uint8:
            tensor.random_(0, 256)
    return batch


def _peaks(torch, device, baseline: int | None) -> dict:
    used = _nvml_used(torch.cuda.current_device())
    return {
        "max_allocated_bytes": int(torch.cuda.max_memory_allocated(device)),
        "max_reserved_bytes": int(torch.cuda.max_memory_reserved(device)),
        "nvml_used_bytes": used - baseline if used is not None and baseline is not None else None,
    }


def _nvml_used(index: int) -> int | None:
    """NVML's used memory of device `index`, or None where NVML cannot say. Assumes the
    measuring process's device 0 is NVML's device 0 unless CUDA_VISIBLE_DEVICES says
    otherwise (then its first entry)."""
    import os

    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
            nvml_index = int(visible) if visible.isdigit() else index
            handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - NVML missing or failing: no figure
        return None


if __name__ == "__main__":
    sys.exit(main())
