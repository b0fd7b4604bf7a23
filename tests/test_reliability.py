"""Issue 15: no run lost to a crash, a signal, a busy machine or a small dataset; every
bad input one clear line. Real processes (two `lofi train` on one run folder, kill -9),
real files (a read-only folder, /dev/zero under a memory limit), the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from lofi.cli import main
from lofi.train.checkpoint import load_checkpoint
from planner.fidelity import Fidelity
from planner.plan import Hardware
from planner.plan_file import plan_to_dict, save_plan
from train_helpers import data_args, make_tiny_dataset, tiny_candidate, tiny_plan

UNWRITABLE = Path("/sys/kernel")  # exists, and takes no new file, not even from root


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("synth") / "data")


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_clear_line(result, *needles, code=2):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


def spawn(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "lofi", "train", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and not (path.exists() and path.stat().st_size):
        time.sleep(0.2)
    assert path.exists(), f"{path} never appeared"


# --- 2: a validation subset without some of the training classes ---------------------


def test_a_small_dataset_whose_validation_lacks_a_class_ends_with_a_summary(tmp_path):
    made = cli("data", "synth", "--out", tmp_path / "s12", "--videos", 12, "--size", 32, "--min-duration", 8,
               "--max-duration", 12)
    assert made.exit_code == 0, made.output
    database = json.loads((tmp_path / "s12" / "annotations.json").read_text())["database"]
    labels = {s: {a["label"] for v in database.values() if v["subset"] == s for a in v["annotations"]}
              for s in ("training", "validation")}
    assert labels["training"] - labels["validation"]  # the case of the issue
    save_plan(tiny_plan(), tmp_path / "plan.json")
    result = cli("train", "--plan", tmp_path / "plan.json", "--baseline", "--annotations",
                 tmp_path / "s12" / "annotations.json", "--videos", tmp_path / "s12" / "videos",
                 "--classification", tmp_path / "s12" / "classification.json", "--full-tr", 8, "--full-sr", 32,
                 "--frames-per-snippet", 2, "--stride", 2, "--head-epochs", 1, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    assert "not scored" in result.output
    summary = json.loads((tmp_path / "runs" / "baseline" / "summary.json").read_text())
    detection = summary["metrics"]["detection"]
    assert set(detection["unscored_classes"]) == labels["training"] - labels["validation"]
    assert detection["ignored_unknown_labels"] > 0 and 0.0 <= detection["average_mAP"] <= 1.0


def test_classification_without_a_validation_video_is_refused_before_training(tiny_data, tmp_path):
    scores = json.loads(tiny_data.classification.read_text())
    dropped = next(v for v, e in json.loads(tiny_data.annotations.read_text())["database"].items()
                   if e["subset"] == "validation")
    del scores["results"][dropped]
    (tmp_path / "scores.json").write_text(json.dumps(scores))
    save_plan(tiny_plan(), tmp_path / "plan.json")
    args = [*data_args(tiny_data), "--runs-dir", tmp_path / "runs", "--plan", tmp_path / "plan.json"]
    args[args.index("--classification") + 1] = tmp_path / "scores.json"
    result = cli("train", *args)
    one_clear_line(result, "scores.json", dropped)
    assert not (tmp_path / "runs" / "lofi").exists()  # nothing trained, nothing left


# --- 3: the default's time target on a busy machine -----------------------------------


def test_the_default_time_target_ranks_but_never_rejects(tiny_data, monkeypatch):
    from lofi.train import options
    from lofi.train.config import CPU_GRID
    from lofi.train.options import PlanOptions, ResolvedData, auto_plan, resolve_data, DataOptions
    from planner.errors import NothingFitsError

    data = resolve_data(DataOptions(str(tiny_data.annotations), str(tiny_data.videos_dir), full_tr=8, full_sr=32,
                                    frames_per_snippet=2, stride=2)).data
    synthetic = ResolvedData(data, synthetic=True, training_videos=4)
    # A machine so busy that an epoch takes longer than the default is sized for.
    monkeypatch.setattr(options, "CPU_EPOCH_BUDGET_SECONDS", 1e-6)
    monkeypatch.setattr(options, "CPU_GRID", replace(CPU_GRID, fidelities=(Fidelity(4, 32, 2),)))
    plan, notices = auto_plan(synthetic, PlanOptions(gpu="cpu"))
    assert plan.chosen.backbone == "tsm_r18"
    said = " ".join(notices)
    assert "per epoch" in said and "trains anyway" in said
    assert any("per epoch" in n for n in plan.notices)  # kept in plan.json too
    with pytest.raises(NothingFitsError, match="time budget"):  # a budget the user asked for still rejects
        auto_plan(synthetic, PlanOptions(gpu="cpu", max_epoch_hours=1e-9))


# --- 5: one writer per run folder ------------------------------------------------------


def test_a_second_writer_is_refused_and_a_killed_runs_lock_is_stale(tiny_data, tmp_path):
    save_plan(tiny_plan(tiny_candidate(batch_per_gpu=1)), tmp_path / "plan.json")
    args = [*data_args(tiny_data), "--plan", tmp_path / "plan.json", "--stage", "lofi", "--epochs", "30",
            "--freeze-bn", "--runs-dir", tmp_path / "runs", "--name", "same", "--checkpoint-every", "1"]
    first = spawn(args, tmp_path)
    try:
        wait_for(tmp_path / "runs" / "same" / "lofi" / "latest.pt")
        second = spawn(args, tmp_path)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        assert "in use by another lofi train" in err and f"pid {first.pid}" in err and "Traceback" not in err
    finally:
        first.send_signal(signal.SIGKILL)  # a crash: its lock is left behind
        first.wait(timeout=60)
    lock = tmp_path / "runs" / ".same.lock"
    assert lock.read_text().split()[0] == str(first.pid)
    checkpoints = tmp_path / "runs" / "same" / "lofi"
    (checkpoints / ".latest.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")  # as a save killed mid-way
    resumed = spawn(["--resume", "--stage", "features", "--runs-dir", tmp_path / "runs",
                     "--name", "same"], tmp_path)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"lock of pid {first.pid} (no longer running) was stale" in err
    assert not lock.exists()  # released on exit
    assert not list(checkpoints.glob(".*.tmp"))
    lines = (tmp_path / "runs" / "same" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines if json.loads(line).get("event") is None]
    assert len(steps) == len(set(steps))  # one writer: no record twice


# --- 7: the plan loader -----------------------------------------------------------------


def _plan_file(tmp_path, **changes):
    document = plan_to_dict(tiny_plan())
    for key, value in changes.items():
        where, field = key.split("__")
        document[where][field] = value
        if where == "chosen":
            document["candidates"][0]["candidate"][field] = value
    path = tmp_path / "edited-plan.json"
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize("changes, message", [
    ({"chosen__head": "transformer"}, "unknown head 'transformer'"),
    ({"chosen__backbone": "vit_g"}, "unknown encoder 'vit_g'"),
])
def test_unknown_names_in_a_plan_are_refused_before_anything_is_written(tiny_data, tmp_path, changes, message):
    result = cli("train", "--plan", _plan_file(tmp_path, **changes), *data_args(tiny_data),
                 "--runs-dir", tmp_path / "runs")
    one_clear_line(result, message)
    assert not (tmp_path / "runs" / "lofi").exists()
    assert list((tmp_path / "runs").iterdir()) == []  # no lock left either


def test_a_chosen_candidate_that_is_not_ranked_is_refused(tmp_path):
    document = plan_to_dict(tiny_plan())
    document["chosen"]["batch_per_gpu"] = 4  # report shows one batch size, training used another
    (tmp_path / "plan.json").write_text(json.dumps(document))
    one_clear_line(cli("report", tmp_path / "plan.json"), "chosen", "none of the candidates")


def test_a_gpu_plan_on_this_cpu_needs_force(tiny_data, tmp_path):
    plan = tiny_plan()
    gpu = replace(plan, scope=replace(plan.scope, hardware=Hardware("h200", "NVIDIA H200", 141 * 2**30, "gpu", True)))
    save_plan(gpu, tmp_path / "plan.json")
    common = ["train", "--plan", tmp_path / "plan.json", *data_args(tiny_data), "--stage", "lofi", "--epochs", 1,
              "--freeze-bn", "--runs-dir", tmp_path / "runs"]
    refused = cli(*common)
    one_clear_line(refused, "NVIDIA H200", "no CUDA GPU", "--force")
    assert not (tmp_path / "runs" / "lofi").exists()
    forced = cli(*common, "--force")
    assert forced.exit_code == 0, forced.output
    assert "no CUDA GPU" in forced.output  # still said, as a warning
    assert load_checkpoint(tmp_path / "runs" / "lofi" / "lofi").state["epoch"] == 1


# --- 8-10: one line for every bad input ---------------------------------------------------


@pytest.fixture()
def deep_json(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    return path


def test_json_nested_100k_deep_is_one_line_everywhere(tiny_data, deep_json, tmp_path):
    good = str(tiny_data.annotations)
    for args in (["eval", "--gt", deep_json, "--pred", good], ["eval", "--gt", good, "--pred", deep_json],
                 ["report", deep_json], ["plan", "--gpu", "v100-32gb", "--annotations", deep_json],
                 ["train", "--plan", deep_json, "--runs-dir", tmp_path / "runs"],
                 ["train", "--auto", "--annotations", deep_json, "--videos", tiny_data.videos_dir,
                  "--runs-dir", tmp_path / "runs"]):
        one_clear_line(cli(*args), "deep.json", "nested too deeply")


@pytest.mark.parametrize("thresholds", ["0.5:0:0.9", "0.5:-0.05:0.9", "0.5:1e-12:0.9", "0.5:nan:0.9"])
def test_impossible_tiou_ranges_are_one_line(tiny_data, thresholds):
    good = str(tiny_data.annotations)
    one_clear_line(cli("eval", "--gt", good, "--pred", good, "--tiou-thresholds", thresholds), thresholds)


def test_unwritable_outputs_are_refused_up_front(tiny_data, tmp_path):
    assert not os.access(UNWRITABLE, os.W_OK) or _refuses_files(UNWRITABLE)
    out = cli("plan", "--gpu", "v100-32gb", "--backbones", "tsm_r18", "--fidelity", "low", "--batch", "1",
              "--out", UNWRITABLE / "plan.json")
    one_clear_line(out, "--out", "cannot write there")
    assert "Candidates" not in out.output and "estimating" not in out.output  # refused before the planning
    listing = cli("data", "check", "--annotations", tiny_data.annotations, "--videos", tiny_data.videos_dir,
                  "--listing", UNWRITABLE / "listing.tsv")
    one_clear_line(listing, "--listing", "cannot write there")
    runs = cli("train", "--auto", "--runs-dir", UNWRITABLE / "runs")
    one_clear_line(runs, str(UNWRITABLE))


def _refuses_files(folder: Path) -> bool:
    try:
        (folder / ".lofi-probe").touch()
    except OSError:
        return True
    (folder / ".lofi-probe").unlink()
    return False


def test_gt_from_dev_zero_under_a_memory_limit_is_one_line(tiny_data):
    limit = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20)); "
        "from lofi.cli import main; sys.argv = ['lofi', 'eval', '--gt', '/dev/zero', '--pred', sys.argv[1]]; main()"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", limit, str(tiny_data.annotations)], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "/dev/zero" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("args, message", [
    (["--workers", "-1"], "--workers"),
    (["--stride", "0"], "--stride"),
    (["--full-tr", "0"], "--full-tr"),
])
def test_invalid_values_are_errors_not_silent_defaults(tiny_data, tmp_path, args, message):
    save_plan(tiny_plan(), tmp_path / "plan.json")
    common = [*data_args(tiny_data), "--plan", tmp_path / "plan.json", "--runs-dir", tmp_path / "runs"]
    for flag in ("--stride", "--full-tr"):  # the value under test replaces the one data_args gives
        if flag in args:
            del common[common.index(flag):common.index(flag) + 2]
    result = cli("train", *common, *args)
    one_clear_line(result, message)
    assert not (tmp_path / "runs" / "lofi").exists()


@pytest.mark.parametrize("bad", ["v_a\nb", "v_a\tb", "v_\x1b[31m"])
def test_video_ids_with_control_characters_are_refused(tmp_path, bad):
    from lofi.data.annotations import load_annotations
    from lofi.errors import InputFileError

    document = {"database": {bad: {"subset": "training", "duration": 5.0, "annotations": []}}}
    (tmp_path / "a.json").write_text(json.dumps(document))
    with pytest.raises(InputFileError, match="control character"):
        load_annotations(tmp_path / "a.json")


# --- 11: housekeeping --------------------------------------------------------------------


def test_synthetic_videos_honour_the_umask(tmp_path):
    from lofi.data.synth import SynthConfig, generate

    config = SynthConfig(videos=2, classes=2, size=32, min_duration=4.0, max_duration=4.0, max_instances=1)
    previous = os.umask(0o027)
    try:
        paths = generate(tmp_path / "d", config)
    finally:
        os.umask(previous)
    modes = {p.stat().st_mode & 0o777 for p in paths.videos_dir.iterdir()}
    assert modes == {0o640}
    assert paths.annotations.stat().st_mode & 0o777 == 0o640


def test_the_cache_follows_lofi_cache_then_xdg_cache_home(monkeypatch, tmp_path):
    from planner.cache_root import cache_root

    monkeypatch.delenv("LOFI_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "lofi"
    monkeypatch.setenv("LOFI_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv("LOFI_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # not absolute: ignored (XDG spec)
    assert cache_root() == Path.home() / ".cache" / "lofi"


def test_a_failed_start_leaves_nothing_so_a_retry_needs_no_overwrite(tiny_data, tmp_path):
    save_plan(tiny_plan(), tmp_path / "plan.json")
    (tmp_path / "empty").mkdir()
    args = [*data_args(tiny_data), "--plan", tmp_path / "plan.json", "--stage", "lofi", "--epochs", 1,
            "--freeze-bn", "--runs-dir", tmp_path / "runs"]
    wrong = list(args)
    wrong[wrong.index("--videos") + 1] = tmp_path / "empty"  # every video missing: fails after config.json
    one_clear_line(cli("train", *wrong), "has readable media")
    assert list((tmp_path / "runs").iterdir()) == []  # no config.json, plan.json, media_problems.txt
    retry = cli("train", *args)
    assert retry.exit_code == 0, retry.output
    assert (tmp_path / "runs" / "lofi" / "config.json").exists()


def test_after_a_resume_the_summary_has_the_lofi_stages_whole_time_and_last_loss(tiny_data, tmp_path):
    from lofi.train.distributed import setup_distributed
    from lofi.train.pipeline import run_pipeline
    from lofi.train.run_folder import RunFolder
    from lofi.train.loop import StopRequest
    from train_helpers import tiny_config

    config, context, run = tiny_config(tiny_data), setup_distributed(prefer_cuda=False), RunFolder(tmp_path / "run")
    with StopRequest() as stop:
        first = run_pipeline(config, tiny_plan(), run, context, stages=("lofi",), stop=stop,
                             on_step=lambda step: stop.request("test") if step == 3 else None)
    assert first.interrupted
    before = first.summary["stages"]["lofi"]["seconds"]
    run_pipeline(config, tiny_plan(), run, context, stages=("lofi",), resume=True)
    whole = json.loads(run.summary.read_text())["stages"]["lofi"]
    assert whole["completed"] and whole["seconds"] > before and whole["last_loss"] is not None
    run_pipeline(config, tiny_plan(), run, context, stages=("lofi",), resume=True)  # nothing left to train
    again = json.loads(run.summary.read_text())["stages"]["lofi"]
    assert again["seconds"] >= whole["seconds"] and again["last_loss"] == whole["last_loss"]
