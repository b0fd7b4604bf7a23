"""benchmarks/calibrate.py end to end on the CPU (--dry-run), from the tree with
PYTHONPATH only, as the next GPU session will run it on a GPU; and the measuring step's
needed-capacity bisection on a real GPU (marked gpu)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_dry_run_writes_the_file_and_prints_the_error_table(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "benchmarks/calibrate.py", "--dry-run", "--max-rows", "1", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads((tmp_path / "cpu-dry-run.json").read_text())
    assert document["schema"] == "lofi.calibration" and document["complete"] is True
    (row,) = document["rows"]
    assert row["measured"]["error"] is None and row["measured"]["step_seconds"] > 0
    # the host allocator: the tensors' bytes, as the planner counts them
    assert row["measured"]["max_allocated_bytes"] == pytest.approx(row["estimate"]["allocated_bytes"], rel=0.02)
    assert "median |error|" in done.stdout and "allocated" in done.stdout


def test_a_failing_row_is_recorded_not_fatal(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import calibrate
    finally:
        sys.path.pop(0)
    from planner.candidate import Candidate
    from planner.fidelity import Fidelity

    broken = Candidate("tsm_r18", "gtad", 1, fidelity=Fidelity(2, 32, 2))  # G-TAD needs T >= 4
    result = calibrate.measure_row(broken, "cpu", False)
    assert "temporal_dim must be an integer >= 4" in result["error"] and result["max_allocated_bytes"] is None


@pytest.mark.gpu
def test_measure_step_bisects_the_needed_capacity_on_cuda():
    from plan_helpers import cand
    from lofi.fidelities import LOW_BUDGET
    from planner.plan_file import candidate_to_dict

    document = json.dumps(candidate_to_dict(cand(LOW_BUDGET, batch=2)))
    done = subprocess.run([sys.executable, "-m", "lofi.measure_step", "--candidate", document, "--needed"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["error"] is None and not result["oom"]
    assert result["max_allocated_bytes"] <= result["needed_bytes"] <= result["max_reserved_bytes"]
    assert result["context_bytes"] > 0 and result["alloc_retries"] == 0


def test_a_row_past_its_time_limit_is_stopped_and_recorded(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import calibrate
    finally:
        sys.path.pop(0)
    from planner.candidate import Candidate
    from planner.fidelity import Fidelity

    result = calibrate.measure_row(Candidate("tsm_r18", "gtad", 1, fidelity=Fidelity(4, 32, 2)), "cpu", False,
                                   limit_s=1.0)
    assert result == {"error": "timed out after 1 s"}
