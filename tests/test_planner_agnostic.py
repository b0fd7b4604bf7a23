"""The planner knows no model family: no name of the LoFi method in `planner/`, and a
workload with axes of its own (torchvision's ResNets, `planner.workload.TorchvisionWorkload`)
is enumerated, estimated, ranked and planned without importing `lofi`.

The project's own name may stay where it names the project, not the method: environment
variables (`LOFI_CACHE`, `LOFI_PROFILES`, `LOFI_PLAN_WORKERS`), the cache folder
(`~/.cache/lofi`), the plan schema (`"lofi.plan"`) and the messages of the plan file that
name the program (`lofi plan`; tests/test_plan_file.py pins them)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Names of the method, its models and its dataset, and references to its package.
FORBIDDEN = re.compile(
    r"\bimport\s+lofi\b|\bfrom\s+lofi\b|python\s+-m\s+lofi\b|\blofi\.\w|\blofi\b"  # the package, LoFi, C-LoFi
    r"|\btsm\b|tsm_|gtad|g-tad|\bbmn\b|activitynet",
    re.IGNORECASE,
)
# The project's name where it names the project (see the module docstring).
ALLOWED = re.compile(r'"lofi\.plan"|(?:\.cache|XDG_CACHE_HOME)/lofi\b|/ "lofi"|`lofi plan`|not a lofi plan|this lofi reads')


def forbidden_names(text: str) -> list[str]:
    """Every forbidden name in `text`, once the allowed forms are taken out."""
    return [m.group(0) for m in FORBIDDEN.finditer(ALLOWED.sub("", text))]


def test_the_scan_finds_the_method_names():
    for line in ("from lofi.models import x", "import lofi", "python -m lofi.measure_step", "C-LoFi cycle",
                 "a LoFi run", "tsm_r18", "the TSM encoder", "G-TAD", "gtad", "BMN head", "ActivityNet-1.3"):
        assert forbidden_names(line), line
    for line in ('SCHEMA = "lofi.plan"', "$LOFI_CACHE", "~/.cache/lofi/traces", 'Path(xdg) / "lofi"',
                 "(run `lofi plan` to make one)", "resnet18 with a classifier", "a cycle of fidelities"):
        assert not forbidden_names(line), line


def test_no_method_name_in_the_planner():
    found = {
        f"{path.relative_to(ROOT)}:{number}": names
        for path in sorted((ROOT / "planner").rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if (names := forbidden_names(line))
    }
    assert not found, found


# Runs in a fresh interpreter: nothing of `lofi` may be imported along the way.
SCRIPT = r"""
import json, sys
from dataclasses import dataclass, replace

from planner.axes import WorkloadAxes
from planner.choose import describe
from planner.errors import FieldError
from planner.fidelity import Fidelity
from planner.grid import GridSpec, build_grid, select_fidelities
from planner.planning import PlanRequest, estimate_and_rank, plan_from_request, rank
from planner.hardware.profiles import get_profile
from planner.quality import config_key, rank_equal
from planner.workload import TorchvisionWorkload


@dataclass(frozen=True)
class DepthQuality:
    tier: int
    depth: int
    reported_score: float | None = None

    def summary(self):
        return f"depth {self.depth}"

    def why_below(self, best):
        return f"shallower: {self.depth} vs {best.depth} layers"


def by_depth(candidates):
    keys = {config_key(c) for c in candidates}
    depths = sorted({int(key[0].removeprefix("resnet")) for key in keys}, reverse=True)
    return {key: DepthQuality(depths.index(int(key[0].removeprefix("resnet"))), int(key[0].removeprefix("resnet")))
            for key in keys}


SMALL, LARGER = Fidelity(1, 32), Fidelity(1, 48)
axes = WorkloadAxes(backbones=("resnet18", "resnet34"), heads=("classifier",), fidelities=(SMALL,),
                    cycles=((SMALL, LARGER),), named_fidelities=(("small", SMALL), ("larger", LARGER)),
                    named_cycles=(("both", (SMALL, LARGER)),), cycle_label="multi-size",
                    global_batch=4, videos_per_epoch=100, dataset="synthetic images", quality=by_depth)
result = {}
spec = GridSpec(axes, cycles=(), batches=(2, 4), precisions=("fp32",), checkpointing=("none",))
result["defaults"] = [list(spec.backbones), spec.head, spec.global_batch]
result["selected"] = [[f.label() for f in fs] for fs in select_fidelities(axes, names=["larger", "both"])[1]]
try:
    build_grid(GridSpec(axes, backbones=("resnet9",)), get_profile("v100-32gb"))
except FieldError as error:
    result["unknown_backbone"] = str(error)
request = PlanRequest(spec, get_profile("v100-32gb"))
estimates, ranking = estimate_and_rank(request, TorchvisionWorkload())
plan = plan_from_request(request, ranking)
result["estimated"] = sorted((e.candidate.backbone, e.candidate.batch_per_gpu, e.memory.total > 0) for e in estimates)
result["chosen"] = [plan.chosen.backbone, plan.chosen.batch_per_gpu]
result["reasons"] = sorted({e.reason for e in plan.candidates if e.candidate.backbone == "resnet18"})
result["dataset"] = [plan.scope.videos_per_epoch, plan.scope.dataset]
result["describe"] = describe(build_grid(GridSpec(axes, fidelities=(), checkpointing=("none",)),
                                         get_profile("v100-32gb"))[0], axes.cycle_label)
unranked = replace(request, spec=replace(spec, axes=replace(axes, quality=rank_equal)))
equal = rank(unranked, estimates)
result["equal"] = [sorted({r.quality.tier for r in equal.ranked}), equal.chosen.quality.summary()]
result["lofi_modules"] = sorted(m for m in sys.modules if m == "lofi" or m.startswith("lofi."))
print(json.dumps(result))
"""


def test_planner_plans_a_torchvision_workload_without_lofi(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOFI_CACHE": str(tmp_path), "LOFI_PLAN_WORKERS": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["lofi_modules"] == []
    # Defaults and validation come from the workload's axes.
    assert result["defaults"] == [["resnet18", "resnet34"], "classifier", 4]
    assert result["selected"] == [["1/32", "1/48"]]
    assert "unknown backbone 'resnet9'; choose from resnet18, resnet34" in result["unknown_backbone"]
    # Every candidate estimated; the workload's quality ranks the deeper ResNet first.
    assert result["estimated"] == [["resnet18", 2, True], ["resnet18", 4, True], ["resnet34", 2, True],
                                   ["resnet34", 4, True]]
    assert result["chosen"][0] == "resnet34"
    assert result["reasons"] == ["shallower: 18 vs 34 layers"]
    assert result["dataset"] == [100, "synthetic images"]
    # Axes that rank nothing: one tier, speed alone decides.
    assert result["equal"] == [[0], "not ranked: the workload gives no quality order"]
    assert result["describe"].startswith("multi-size 1/32+1/48 resnet18, batch ")
