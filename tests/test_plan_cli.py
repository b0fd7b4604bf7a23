"""`lofi plan` and `lofi report`: the rich report, plan.json, --json, exit codes.

`lofi report` is tested on plan files made from hand-made estimates; `lofi plan` runs the
real estimator (fake-tensor tracing) on small grids."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from lofi.cli import main
from plan_helpers import make_plan
from planner.plan_file import VERSION, load_plan, plan_to_dict, save_plan


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# --- lofi report -------------------------------------------------------------------


def test_report_renders_a_saved_plan(tmp_path):
    path = save_plan(make_plan(), tmp_path / "plan.json")
    result = run("report", str(path))
    assert result.exit_code == 0
    out = result.output
    assert "1 × NVIDIA V100 SXM2 32GB (v100-32gb, profile)" in out
    assert "28.8 GiB per GPU = 32.0 GiB × (1 − 10% margin)" in out
    assert "✓ chosen" in out and "Chosen" in out and "C-LoFi" in out
    assert "✗ does not fit" in out and "90.0" in out
    assert "█" in out and "┊" in out  # memory bars against capacity, margin tick
    assert "1.51 h per epoch of 9,649 videos" in out
    assert "no GPU here: planned for v100-32gb" in out


def test_report_of_a_hand_broken_plan_is_one_clear_error(tmp_path):
    document = plan_to_dict(make_plan())
    document["chosen"]["batch_per_gpu"] = 0
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(document))
    result = run("report", str(path))
    assert result.exit_code == 2
    assert "error:" in result.output and "chosen.batch_per_gpu: expected an integer >= 1, got 0" in result.output
    assert "Traceback" not in result.output
    missing = run("report", str(tmp_path / "none.json"))
    assert missing.exit_code == 2 and "plan file not found" in missing.output


def test_report_all_shows_every_candidate(tmp_path):
    path = save_plan(make_plan(), tmp_path / "plan.json")
    assert "3 candidates in all" in run("report", "--all", str(path)).output


# --- lofi plan (real estimator, small grids) ----------------------------------------

SMALL = ("--backbones", "tsm_r18", "--fidelity", "low", "--batch", "16", "--precision", "fp32",
         "--checkpointing", "none", "--no-accumulation")


def test_plan_json_prints_only_the_document_and_writes_plan_json(tmp_path):
    out = tmp_path / "plan.json"
    done = subprocess.run(
        [sys.executable, "-m", "lofi", "plan", "--gpu", "v100-32gb", *SMALL, "--videos", "100", "--json", "--out", str(out)],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)  # stdout is the document and nothing else
    assert document["schema"] == "lofi.plan" and document["version"] == VERSION
    assert document["hardware"] == {"name": "v100-32gb", "display_name": "NVIDIA V100 SXM2 32GB",
                                    "memory_bytes": 32 * 2**30, "kind": "gpu", "detected": False}
    chosen = document["chosen"]
    assert (chosen["tr"], chosen["sr"], chosen["frames_per_snippet"], chosen["backbone"], chosen["head"]) == (25, 112, 8, "tsm_r18", "gtad")
    assert (chosen["batch_per_gpu"], chosen["accumulation"], chosen["precision"], chosen["checkpointing"]) == (16, 1, "fp32", "none")
    assert chosen["cycle"] is None
    assert document["estimate"]["total_bytes"] > 0 and document["estimate"]["time"]["videos_per_epoch"] == 100
    assert all({"fits", "reason", "estimate"} <= set(c) for c in document["candidates"])
    assert load_plan(out).chosen.backbone == "tsm_r18"


def test_plan_report_shows_the_winner_and_its_time(tmp_path):
    result = run("plan", "--gpu", "v100-32gb", *SMALL, "--out", str(tmp_path / "plan.json"))
    assert result.exit_code == 0, result.output
    assert "✓ chosen" in result.output and "per epoch of 9,649 videos" in result.output
    assert (tmp_path / "plan.json").is_file()


def test_plan_nothing_fits_exits_3_with_levers(tmp_path):
    result = run("plan", "--gpu", "t4", "--backbones", "tsm_r50", "--fidelity", "full", "--batch", "16",
                 "--precision", "fp32", "--checkpointing", "none", "--no-accumulation", "--out", str(tmp_path / "p.json"))
    assert result.exit_code == 3
    text = " ".join(result.output.split())
    assert "nothing fits in 14.4 GiB per GPU" in text
    for lever in ("gradient checkpointing (--checkpointing blocks:N, block, chunk:K or offload)",
                  "half precision (--precision fp16, or bf16 where the GPU has it)",
                  "a smaller batch per GPU with gradient accumulation (drop --no-accumulation)",
                  "fewer snippets (--tr below 100)", "more GPUs (--gpus), which splits the global batch"):
        assert lever in text
    assert not (tmp_path / "p.json").exists()


def test_plan_bad_options_are_one_line_errors(tmp_path):
    result = run("plan", "--gpu", "v100-32gb", "--precision", "bf16", "--out", str(tmp_path / "p.json"))
    assert result.exit_code == 2 and "--precision bf16: v100-32gb (NVIDIA V100 SXM2 32GB) has no bf16" in result.output
    # planner errors name the field; the CLI names the option that sets it
    result = run("plan", "--gpu", "v100-32gb", "--checkpointing", "chunk:0", "--out", str(tmp_path / "p.json"))
    assert result.exit_code == 2 and "--checkpointing: checkpointing policy must be" in result.output
    result = run("plan", "--gpu", "v100-32gb", "--margin", "1.5", "--out", str(tmp_path / "p.json"))
    assert result.exit_code == 2 and "--margin must be in [0, 1), got 1.5" in result.output
    result = run("plan", "--gpu", "v100-32gb", "--global-batch", "0", "--out", str(tmp_path / "p.json"))
    assert result.exit_code == 2 and "--global-batch must be >= 1, got 0" in result.output
    result = run("plan", "--gpu", "b300", "--out", str(tmp_path / "p.json"))
    assert result.exit_code == 2 and "unknown GPU profile 'b300'" in result.output
    result = run("plan", "--gpu", "v100-32gb", "--videos", "5", "--annotations", "x.json")
    assert result.exit_code == 2 and "--videos or --annotations, not both" in result.output


def test_plan_counts_training_videos_of_an_annotation_file(tmp_path):
    database = {f"v{i}": {"subset": "training" if i < 7 else "validation", "duration": 10.0,
                          "annotations": [{"segment": [1.0, 2.0], "label": "a"}]} for i in range(10)}
    annotations = tmp_path / "gt.json"
    annotations.write_text(json.dumps({"database": database, "version": "1.3"}))
    result = run("plan", "--gpu", "v100-32gb", *SMALL, "--annotations", str(annotations), "--json",
                 "--out", str(tmp_path / "plan.json"))
    assert result.exit_code == 0, result.output
    assert load_plan(tmp_path / "plan.json").scope.videos_per_epoch == 7


@pytest.mark.parametrize("verb", ["plan", "report", "gpus"])
def test_verbs_are_registered_and_import_no_torch(verb):
    code = (
        "import sys; from lofi.cli import COMMANDS; import importlib; "
        f"importlib.import_module(COMMANDS[{verb!r}].split(':')[0]); print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# --- --measure: the subprocess runner ------------------------------------------------


def _script(body: str) -> list[str]:
    """A real subprocess that answers like `python -m lofi.measure_step`."""
    return [sys.executable, "-c", body]


def test_measure_runs_each_candidate_in_its_own_subprocess():
    from planner.measure_finalists import measure_candidates
    from plan_helpers import cand
    from lofi.fidelities import LOW_BUDGET, T_LOFI

    body = (
        "import json, sys; c = json.loads(sys.argv[sys.argv.index('--candidate') + 1]); "
        "print('noise'); print(json.dumps({'oom': c['sr'] == 224, 'max_allocated_bytes': c['tr'], "
        "'max_reserved_bytes': 2 * c['tr'], 'nvml_used_bytes': 3 * c['tr'], 'step_seconds': 0.5, "
        "'device': 'test', 'error': None}))"
    )
    seen = []
    results = measure_candidates([cand(LOW_BUDGET), cand(T_LOFI)], _script(body), on_result=lambda c, m: seen.append(c))
    assert [r.oom for r in results] == [False, True]
    assert results[0].max_reserved_bytes == 50 and results[0].nvml_used_bytes == 75
    assert len(seen) == 2


def test_measure_failures_are_results_not_crashes():
    from planner.measure_finalists import measure_candidate
    from plan_helpers import cand
    from lofi.fidelities import LOW_BUDGET

    crashed = measure_candidate(cand(LOW_BUDGET), _script("import sys; sys.stderr.write('boom\\n'); sys.exit(1)"))
    assert not crashed.oom and crashed.error == "no result: boom"
    garbage = measure_candidate(cand(LOW_BUDGET), _script("print('{\"oom\": \"maybe\"}')"))
    assert "oom: expected true or false" in garbage.error
    slow = measure_candidate(cand(LOW_BUDGET), _script("import time; time.sleep(5)"), timeout_s=0.5)
    assert slow.error == "timed out after 0 s" or slow.error.startswith("timed out")


def test_measure_needs_a_gpu(tmp_path):
    from planner.hardware.nvml import detect_gpus
    from planner.hardware.profiles import list_profiles

    if detect_gpus(list_profiles()).gpus:
        pytest.skip("a GPU is visible here")
    result = run("plan", "--gpu", "v100-32gb", *SMALL, "--measure", "--out", str(tmp_path / "p.json"))
    assert result.exit_code == 2 and "--measure needs a GPU" in result.output


@pytest.mark.gpu
def test_measure_step_runs_two_real_training_steps_on_cuda():
    from plan_helpers import cand
    from lofi.fidelities import LOW_BUDGET
    from planner.measure_finalists import measure_candidate

    result = measure_candidate(cand(LOW_BUDGET, batch=2), [sys.executable, "-m", "lofi.measure_step"])
    assert result.error is None and not result.oom
    assert 0 < result.max_allocated_bytes <= result.max_reserved_bytes <= result.nvml_used_bytes
    assert result.step_seconds > 0


def test_report_shows_allocated_needed_and_reserved_and_expandable_segments(tmp_path):
    out = tmp_path / "plan.json"
    made = run("plan", "--gpu", "v100-32gb", *SMALL, "--videos", "100", "--allocator", "both", "--out", str(out))
    assert made.exit_code == 0, made.output
    plan = load_plan(out)
    assert {e.candidate.expandable_segments for e in plan.candidates} == {False, True}
    for entry in plan.candidates:
        memory = entry.memory
        assert memory.allocated_peak <= memory.needed_capacity <= memory.reserved_peak
        assert memory.total == memory.needed_capacity + memory.context  # the verdict's number
    shown = run("report", "--all", str(out)).output
    assert "allocated / needed / reserved" in shown and "needed capacity" in shown
    assert "max_memory_allocated" in shown and "max_memory_reserved, no limit" in shown
    assert "expandable" in shown


# --- the memory-time frontier of the choice: table, --plot ---------------------------

POLICIES = ("--backbones", "tsm_r18", "--fidelity", "low", "--batch", "16", "--precision", "fp32",
            "--checkpointing", "none,block,chunk:4", "--no-accumulation", "--videos", "100")


def test_plan_shows_the_frontier_of_the_choice_and_plots_it_as_png(tmp_path):
    from planner.frontier import plan_frontier

    out, plot = tmp_path / "plan.json", tmp_path / "figures" / "frontier.png"
    result = CliRunner().invoke(main, ["plan", "--gpu", "v100-32gb", *POLICIES, "--out", str(out), "--plot", str(plot)],
                                catch_exceptions=False, terminal_width=160)
    assert result.exit_code == 0, result.output
    text = result.output
    assert "Memory–time frontier: low 25/112 tsm_r18, batch 16, fp32" in text
    assert "budget 28.8 GiB per GPU = 32.0 GiB × (1 − 10% margin)" in text
    table = text[text.index("Memory–time frontier"):]
    frontier = plan_frontier(load_plan(out))
    assert sorted(p.checkpointing for p in frontier.points) == ["block", "chunk:4", "none"]
    rows = [line.split() for line in table.splitlines() if line.split()[:1] in (["none"], ["block"], ["chunk:4"])]
    assert [row[0] for row in rows] == [p.checkpointing for p in frontier.points]  # least memory first
    for row, point in zip(rows, frontier.points):
        assert row[1] == f"{point.needed_bytes / 2**30:.2f}"
        assert ("chosen" in row) == point.chosen and ("●" in row) == point.pareto
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and list(plot.parent.iterdir()) == [plot]


def test_plan_json_plots_svg_and_keeps_stdout_the_document(tmp_path):
    out, plot = tmp_path / "plan.json", tmp_path / "frontier.svg"
    done = subprocess.run([sys.executable, "-m", "lofi", "plan", "--gpu", "cpu", *POLICIES, "--json",
                           "--out", str(out), "--plot", str(plot)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["schema"] == "lofi.plan"
    svg = plot.read_text()
    assert svg.startswith("<?xml") and "<svg" in svg and svg.rstrip().endswith("</svg>")
    assert f"wrote {plot}" in done.stderr


def test_plot_of_an_unsupported_format_or_without_matplotlib_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "plan.json"
    result = run("plan", "--gpu", "v100-32gb", *POLICIES, "--out", str(out), "--plot", str(tmp_path / "f.pdf"))
    assert result.exit_code == 2 and "f.pdf: cannot draw a .pdf file; name it .png or .svg" in result.output
    assert not out.exists()
    driver = ("import sys; sys.modules['matplotlib'] = None; from lofi.cli import main; "
              "main(sys.argv[1:], prog_name='lofi')")
    done = subprocess.run([sys.executable, "-c", driver, "plan", "--gpu", "v100-32gb", *POLICIES, "--out", str(out),
                           "--plot", str(tmp_path / "f.png")], capture_output=True, text=True, check=False)
    assert done.returncode == 2, done.stderr
    assert ("error: drawing the memory-time frontier needs matplotlib, which is not installed: "
            "pip install 'lofi[plots]'") in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr and not out.exists() and not (tmp_path / "f.png").exists()


def test_report_shows_the_frontier_of_a_saved_plan(tmp_path):
    path = save_plan(make_plan(), tmp_path / "plan.json")
    out = CliRunner().invoke(main, ["report", str(path)], terminal_width=160).output
    frontier = out[out.index("Memory–time frontier: C-LoFi tsm_r34, batch 2×8, fp16"):]
    assert "chunk:4" in frontier and "20.00" in frontier and "✓ chosen" in frontier


def test_a_plan_that_offloads_reports_the_pinned_host_memory_and_the_copies(tmp_path):
    args = ("--backbones", "tsm_r18", "--fidelity", "low", "--batch", "1", "--precision", "fp16",
            "--checkpointing", "offload", "--videos", "100", "--out", str(tmp_path / "plan.json"))
    result = CliRunner().invoke(main, ["plan", "--gpu", "v100-32gb", *args], catch_exceptions=False, terminal_width=200)
    assert result.exit_code == 0, result.output
    chosen = load_plan(tmp_path / "plan.json")
    assert chosen.chosen.checkpointing == "offload" and chosen.memory.host_pinned > 0
    text = " ".join(result.output.split())
    assert f"pinned host memory {chosen.memory.host_pinned / 2**30:.2f} offloaded activations" in text
    assert f"{chosen.time.host_transfer_seconds:.2f} s of each step copies offloaded activations" in text
