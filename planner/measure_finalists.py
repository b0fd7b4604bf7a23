"""Measuring the finalists: run them for real, each in its own subprocess so that one
out-of-memory error (or a wedged CUDA context) cannot poison the next.

The planner does not import the workload; the caller gives the command that runs one
candidate of its workload (e.g. `python -m <package>.measure_step`). That command gets `--candidate JSON`
(planner.plan_file.candidate_to_dict) and prints one JSON object as its last stdout line:
{"oom", "max_allocated_bytes", "max_reserved_bytes", "nvml_used_bytes", "step_seconds",
"device", "error"} (planner.plan.Measurement).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence

from planner.candidate import Candidate
from planner.errors import PlanFileError
from planner.plan import Measurement
from planner.plan_file import candidate_to_dict, measurement_from_dict

DEFAULT_TIMEOUT_S = 900.0


def measure_candidate(candidate: Candidate, command: Sequence[str], *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Measurement:
    """Run `command --candidate JSON` and read its result; failures become a Measurement
    with `error` set (an OOM is a result, not an error)."""
    argv = [*command, "--candidate", json.dumps(candidate_to_dict(candidate))]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return Measurement(oom=False, error=f"timed out after {timeout_s:.0f} s")
    except OSError as error:
        return Measurement(oom=False, error=f"could not start {argv[0]}: {error}")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if not lines:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        return Measurement(oom=False, error=f"no result: {tail[0]}")
    try:
        return parse_measurement(lines[-1])
    except PlanFileError as error:
        return Measurement(oom=False, error=str(error))


def measure_candidates(
    candidates: Sequence[Candidate],
    command: Sequence[str],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    on_result: Callable[[Candidate, Measurement], None] | None = None,
) -> list[Measurement]:
    """One subprocess per candidate, in order."""
    results = []
    for candidate in candidates:
        result = measure_candidate(candidate, command, timeout_s=timeout_s)
        if on_result is not None:
            on_result(candidate, result)
        results.append(result)
    return results


def parse_measurement(line: str) -> Measurement:
    """The result line of a measuring subprocess -> Measurement (strict)."""
    try:
        document = json.loads(line)
    except json.JSONDecodeError as error:
        raise PlanFileError(f"measurement result is not JSON: {line[:80]!r}") from error
    return measurement_from_dict(document, "measurement result")
