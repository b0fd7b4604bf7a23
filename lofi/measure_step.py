"""`python -m lofi.measure_step --candidate JSON`: run one candidate's real training step
and print what it used, as one JSON line (planner.measure_finalists reads it).

Run by `lofi plan --measure` and benchmarks/calibrate.py, one subprocess per candidate,
so that an out-of-memory error cannot leave the next candidate a fragmented allocator
or a broken context. The step is the planner's (planner/workload.py) with the trainer's
model and optimizer (lofi.plan_workload -> lofi.models.lofi_model): forward + loss
under autocast, backward, optimizer step, zero_grad. Two optimizer steps, each of up to
two accumulation micro-steps (the peak is reached in the first: later micro-steps
repeat it), for each fidelity of a C-LoFi cycle. The candidate's allocator setting
(PYTORCH_CUDA_ALLOC_CONF) is set before CUDA starts.

Output, one JSON object (planner.plan.Measurement):
  max_allocated_bytes / max_reserved_bytes   torch.cuda.max_memory_allocated / _reserved
  nvml_used_bytes   NVML's used memory of the device minus what was used before this
                    process touched CUDA
  context_bytes     NVML used right after CUDA initialised minus before (the context)
  alloc_retries     num_alloc_retries: times the allocator released its cache and retried
  step_seconds      the optimizer step (the timed micro-step x accumulation, plus the update)
  needed_bytes      with --needed: the smallest capacity at which the steps run without
                    OOM, bisected over torch.cuda.set_per_process_memory_fraction, each
                    probe a fresh `--capacity` subprocess
With `--capacity BYTES` the process first limits itself to that much
(set_per_process_memory_fraction). `--device cpu` runs the step on the CPU (the
calibration's dry run): the allocated peak is then the tensors' bytes recorded by the
planner's recorder; NVML, context and retries do not apply.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

MICRO_STEPS = 2  # micro-steps run per optimizer step (the candidate may accumulate more)
NEEDED_TOLERANCE = 64 << 20  # bisection of the needed capacity stops within 64 MiB
PROBE_TIMEOUT_S = 180.0
FIELDS = ("oom", "max_allocated_bytes", "max_reserved_bytes", "nvml_used_bytes", "step_seconds", "device", "error",
          "needed_bytes", "alloc_retries", "context_bytes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lofi.measure_step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidate", required=True, help="a candidate as plan.json writes it")
    parser.add_argument("--capacity", type=int, help="limit this process to BYTES of device memory")
    parser.add_argument("--needed", action="store_true", help="also bisect the capacity the step needs")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = parser.parse_args(argv)
    try:
        document = json.loads(args.candidate)
        if args.device == "cpu":
            result = measure_on_cpu(document)
        else:
            result = measure(document, capacity=args.capacity)
            if args.needed and not result.get("oom") and not result.get("error"):
                result["needed_bytes"] = needed_capacity(args.candidate, result)
    except Exception as error:  # noqa: BLE001 - report anything as a result line, never a traceback
        result = {"oom": False, "error": f"{type(error).__name__}: {error}"}
    print(json.dumps({name: result.get(name) for name in FIELDS}))
    return 0


def measure(document: dict, *, capacity: int | None = None) -> dict:
    from planner.plan_file import candidate_from_dict

    candidate = candidate_from_dict(document, "--candidate")
    if candidate.alloc_conf:
        from lofi.train.plan_check import apply_alloc_conf

        apply_alloc_conf(candidate.alloc_conf)  # before CUDA starts
    baseline = _nvml_used(0)  # before this process creates a CUDA context
    import torch

    if not torch.cuda.is_available():
        return {"oom": False, "error": "CUDA is not available in the measuring process"}
    device = torch.device("cuda", 0)
    torch.cuda.init()
    torch.cuda.synchronize(device)
    initialised = _nvml_used(torch.cuda.current_device())
    context = initialised - baseline if initialised is not None and baseline is not None else None
    if capacity is not None:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(capacity / total, 1.0), device)
    torch.cuda.reset_peak_memory_stats(device)
    name = torch.cuda.get_device_name(device)
    common = {"device": name, "context_bytes": context}
    try:
        seconds = max(_run(candidate, spec, device) for spec in _steps(candidate, "cuda"))
    except torch.cuda.OutOfMemoryError:
        return {"oom": True, **common, **_peaks(torch, device, baseline)}
    return {"oom": False, "step_seconds": seconds, **common, **_peaks(torch, device, baseline)}


def measure_on_cpu(document: dict) -> dict:
    """The same steps on the CPU under the planner's recorder: the tensors' bytes."""
    import torch

    from planner.cost.replay import replay
    from planner.plan_file import candidate_from_dict
    from planner.tracing.recorder import PARAMETER, Recorder

    candidate = candidate_from_dict(document, "--candidate")
    device = torch.device("cpu")
    peak, seconds = 0, 0.0
    for spec in _steps(candidate, "cpu"):
        recorder = Recorder(compress=False, cache=False)
        with recorder:
            seconds = max(seconds, _run(candidate, spec, device, adopt=lambda m: (
                recorder.adopt(m.parameters(), PARAMETER), recorder.adopt(m.buffers(), PARAMETER))))
            trace = recorder.close(batch_size=candidate.batch_per_gpu, grad_bytes=(), carry=())
        peak = max(peak, replay(trace.ops, trace.ids, trace.sizes, trace.categories, kind="plain").allocated_peak)
    return {"oom": False, "device": "cpu (dry run)", "step_seconds": seconds, "max_allocated_bytes": peak,
            "max_reserved_bytes": peak, "needed_bytes": peak}


def needed_capacity(candidate_json: str, unconstrained: dict) -> int | None:
    """Bisect the capacity between the unconstrained run's allocated and reserved peaks:
    each probe a fresh subprocess with --capacity; a probe that runs out of memory (or
    fails) counts as too small."""
    low, high = unconstrained.get("max_allocated_bytes"), unconstrained.get("max_reserved_bytes")
    if low is None or high is None:
        return None
    while high - low > NEEDED_TOLERANCE:
        middle = (low + high) // 2
        if probe(candidate_json, middle).get("oom", True):
            low = middle
        else:
            high = middle
    return high


def probe(candidate_json: str, capacity: int) -> dict:
    """One `--capacity` run in a fresh process; its result line (or an error)."""
    argv = [sys.executable, "-m", "lofi.measure_step", "--candidate", candidate_json, "--capacity", str(capacity)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, OSError, IndexError, json.JSONDecodeError) as error:
        return {"oom": True, "error": f"probe at {capacity} bytes failed: {error}"}
    if result.get("error"):
        result["oom"] = True
    return result


def _steps(candidate, target: str):
    from planner.workload import step_specs

    return step_specs(candidate, target)


def _run(candidate, spec, device, adopt=None) -> float:
    """Two optimizer steps of `spec`; returns the second one's time for the full
    accumulation (seconds). `adopt(model)`: called once the model exists."""
    import torch

    from lofi.plan_workload import lofi_workload

    cuda = device.type == "cuda"
    workload = lofi_workload()
    model = workload.build_model(spec.model, device)
    if adopt is not None:
        adopt(model)
    optimizer = workload.make_optimizer(model, spec)
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(spec.precision)
    scaler = torch.amp.GradScaler("cuda") if spec.precision == "fp16" and cuda else None
    micro = min(candidate.accumulation, MICRO_STEPS)
    elapsed = 0.0
    for _ in range(2):
        _sync(device)
        started = time.perf_counter()
        for _ in range(micro):
            batch = _filled(workload.make_batch(spec, candidate.batch_per_gpu, device))
            with torch.autocast(device.type, dtype=half, enabled=half is not None and cuda):
                loss = workload.loss(model, batch)
            (scaler.scale(loss) if scaler else loss).backward()
        _sync(device)
        backward_done = time.perf_counter()
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        per_micro = (backward_done - started) / micro
        elapsed = per_micro * candidate.accumulation + (time.perf_counter() - backward_done)
    del model, optimizer
    return elapsed


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
        "alloc_retries": int(torch.cuda.memory_stats(device).get("num_alloc_retries", 0)),
        "nvml_used_bytes": used - baseline if used is not None and baseline is not None else None,
    }


def _nvml_used(index: int) -> int | None:
    """NVML's used memory of device `index`, or None where NVML cannot say. Assumes the
    measuring process's device 0 is NVML's device 0 unless CUDA_VISIBLE_DEVICES says
    otherwise (then its first entry)."""
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
