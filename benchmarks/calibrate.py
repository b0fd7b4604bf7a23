"""Calibrate the planner against a real GPU: run the grid of profiles/measured/README.md,
each candidate in its own `python -m lofi.measure_step` subprocess, write
profiles/measured/<gpu>.json as it goes and print estimate vs measurement per quantity.

    PYTHONPATH=$PWD python benchmarks/calibrate.py [--budget-s 400] [--out profiles/measured]
    PYTHONPATH=$PWD python benchmarks/calibrate.py --dry-run     # the CPU, a tiny grid (CI)

Robust by design: a probe that fails or times out is recorded with its error and the
run goes on; rows not started within the time budget are recorded as skipped, and a
running row is stopped 60 s after it (so the whole run ends by budget + 60 s: 7 min 40 s
by default); the JSON file is rewritten (atomically) after every row, so a killed run
leaves what it measured. The rows that bisect the needed capacity run first.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from the tree without an install

from lofi.fidelities import C_LOFI_CYCLE, NAMED_FIDELITIES  # noqa: E402
from lofi.plan_axes import LOFI_AXES  # noqa: E402
from lofi.plan_workload import lofi_workload  # noqa: E402
from planner.atomic_files import atomic_write_text  # noqa: E402
from planner.candidate import Candidate  # noqa: E402
from planner.estimate import estimate_grid  # noqa: E402
from planner.fidelity import Fidelity  # noqa: E402
from planner.plan_file import candidate_to_dict  # noqa: E402
from planner.hardware.profiles import get_profile, list_profiles  # noqa: E402

SCHEMA, VERSION = "lofi.calibration", 1
ROW_TIMEOUT_S = 150.0  # one unconstrained measurement
NEEDED_TIMEOUT_S = 420.0  # one measurement with its needed-capacity bisection
GIB = 2**30


def gpu_grid(half: str) -> list[tuple[Candidate, bool]]:
    """(candidate, bisect the needed capacity) — the grid of profiles/measured/README.md."""
    low, st = NAMED_FIDELITIES["low"], NAMED_FIDELITIES["ST"]
    rows = [
        (Candidate(backbone, "gtad", 2, fidelity=fidelity, precision=precision, checkpointing=policy), False)
        for backbone in ("tsm_r18", "tsm_r50")
        for fidelity in (low, st)
        for precision in ("fp32", half)
        for policy in ("none", "block")
    ]
    rows += [
        (Candidate("tsm_r18", "gtad", 8, fidelity=st, precision=half, checkpointing="block"), False),
        (Candidate("tsm_r18", "gtad", 2, cycle=C_LOFI_CYCLE, precision=half, checkpointing="block"), False),
    ]
    needed = [
        (Candidate("tsm_r50", "gtad", 2, fidelity=st, precision=half, checkpointing="none"), True),
        (Candidate("tsm_r18", "gtad", 2, fidelity=st, precision="fp32", checkpointing="block"), True),
        (Candidate("tsm_r50", "gtad", 4, fidelity=low, precision="fp32", checkpointing="none"), True),
    ]
    return needed + rows


def dry_grid() -> list[tuple[Candidate, bool]]:
    tiny = Fidelity(4, 32, 2)
    return [(Candidate("tsm_r18", "gtad", 2, fidelity=tiny, optimizer="adam", checkpointing=policy), False)
            for policy in ("none", "block")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="run a tiny grid on the CPU (no GPU needed)")
    parser.add_argument("--out", type=Path, default=ROOT / "profiles" / "measured")
    parser.add_argument("--budget-s", type=float, default=400.0,
                        help="start no row after this many seconds; stop a running one 60 s later")
    parser.add_argument("--max-rows", type=int, help="measure only the first N rows")
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 180)
    started = time.perf_counter()
    if args.dry_run:
        profile, device, rows, name = get_profile("cpu"), "cpu", dry_grid(), "cpu-dry-run"
    else:
        profile, name = _gpu_profile()
        device, rows = "cuda", gpu_grid("bf16" if profile.supports_bf16 else "fp16")
    rows = rows[: args.max_rows] if args.max_rows else rows
    console.print(f"calibrating {name}: {len(rows)} rows; estimating ...")
    estimates = estimate_grid([c for c, _ in rows], lofi_workload(), profile, videos_per_epoch=LOFI_AXES.videos_per_epoch)
    path = args.out / f"{name}.json"
    document = {"schema": SCHEMA, "version": VERSION, "gpu": name, "device": None, "complete": False,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": []}
    for n, ((candidate, bisect), estimate) in enumerate(zip(rows, estimates), start=1):
        elapsed = time.perf_counter() - started
        if elapsed > args.budget_s:
            measured = {"error": f"skipped: time budget of {args.budget_s:.0f} s spent"}
        else:
            console.print(f"[{n}/{len(rows)}] {_label(candidate)}{' (needed capacity)' if bisect else ''}")
            measured = measure_row(candidate, device, bisect, limit_s=args.budget_s + 60 - elapsed)
        document["device"] = document["device"] or measured.get("device")
        document["rows"].append({"candidate": candidate_to_dict(candidate), "estimate": _estimate(estimate),
                                 "measured": measured})
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(document, indent=2) + "\n")  # partial results survive a kill
    document["complete"] = True
    document["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_text(path, json.dumps(document, indent=2) + "\n")
    console.print(error_table(document))
    console.print(f"wrote {path} ({document['seconds']} s)")
    return 0


def measure_row(candidate: Candidate, device: str, bisect: bool, limit_s: float | None = None) -> dict:
    """One measuring subprocess (killed after its timeout, or `limit_s`); a failure is a
    result with `error`, never an exception."""
    argv = [sys.executable, "-m", "lofi.measure_step", "--candidate", json.dumps(candidate_to_dict(candidate)),
            "--device", device, *(["--needed"] if bisect else [])]
    timeout = min(NEEDED_TIMEOUT_S if bisect else ROW_TIMEOUT_S, limit_s if limit_s is not None else float("inf"))
    try:  # its own session: on a timeout the probes it started go with it
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                   env=_env(), start_new_session=True)
    except OSError as error:
        return {"error": f"could not start the measuring process: {error}"}
    try:
        stdout, stderr = process.communicate(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in stdout.splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (stderr.strip().splitlines() or [f"exit code {process.returncode}"])[-1]
        return {"error": f"no result: {tail}"}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _gpu_profile():
    from planner.hardware.nvml import resolve_target

    target = resolve_target("auto", list_profiles(), fallback="cpu")
    if target.profile.kind == "cpu":
        raise SystemExit("no GPU visible here: use --dry-run to exercise the calibration on the CPU")
    return target.profile, target.profile.name


def _estimate(estimate) -> dict:
    memory = estimate.memory
    return {
        "allocated_bytes": memory.allocated_peak,
        "needed_bytes": memory.needed_capacity,
        "reserved_bytes": memory.reserved_peak,
        "context_bytes": memory.context,
        "nvml_used_bytes": memory.reserved_peak + memory.context,  # unconstrained run: its cache + the context
        "cache_releases_per_step": memory.cache_releases_per_step,
        "step_seconds": estimate.time.seconds_per_step if estimate.time else None,  # all micro-steps + update
    }


# quantity: (estimate key, measured key)
QUANTITIES = {
    "allocated": ("allocated_bytes", "max_allocated_bytes"),
    "reserved": ("reserved_bytes", "max_reserved_bytes"),
    "needed": ("needed_bytes", "needed_bytes"),
    "NVML used": ("nvml_used_bytes", "nvml_used_bytes"),
    "context": ("context_bytes", "context_bytes"),
    "step time": ("step_seconds", "step_seconds"),
}


def errors(document: dict) -> dict[str, list[float]]:
    """Relative error (estimate / measured - 1) per quantity over the rows that have both."""
    found: dict[str, list[float]] = {q: [] for q in QUANTITIES}
    for row in document["rows"]:
        for quantity, (est_key, meas_key) in QUANTITIES.items():
            est, meas = row["estimate"].get(est_key), row["measured"].get(meas_key)
            if est is not None and meas:
                found[quantity].append(est / meas - 1.0)
    return found


def error_table(document: dict) -> Table:
    table = Table(title=f"estimate vs measured on {document['device'] or document['gpu']} (error = estimate / measured - 1)")
    table.add_column("candidate")
    for quantity in QUANTITIES:
        table.add_column(quantity, justify="right")
    for row in document["rows"]:
        cells = []
        for est_key, meas_key in QUANTITIES.values():
            est, meas = row["estimate"].get(est_key), row["measured"].get(meas_key)
            cells.append(_cell(est, meas, seconds=est_key == "step_seconds"))
        status = row["measured"].get("error") or ("OOM" if row["measured"].get("oom") else "")
        table.add_row(_label_dict(row["candidate"]) + (f" [red]{status}[/]" if status else ""), *cells)
    medians = [f"{statistics.median(abs(e) for e in values):.1%}" if values else "–" for values in errors(document).values()]
    table.add_row("[bold]median |error|[/]", *medians)
    return table


def _cell(est, meas, *, seconds: bool) -> str:
    if est is None or not meas:
        return "–"
    value = (lambda x: f"{x:.2f}s") if seconds else (lambda x: f"{x / GIB:.2f}")
    return f"{value(est)}/{value(meas)} {est / meas - 1:+.0%}"


def _label(candidate: Candidate) -> str:
    from lofi.plan_axes import describe

    return describe(candidate)


def _label_dict(document: dict) -> str:
    from planner.plan_file import candidate_from_dict

    return _label(candidate_from_dict(document)).replace("checkpointing ", "")


if __name__ == "__main__":
    sys.exit(main())
