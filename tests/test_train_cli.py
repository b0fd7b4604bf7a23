"""`lofi train` from the command line: a run from a plan file, SIGTERM and resume, and
clear errors (several processes: tests/test_train_distributed.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from lofi.cli import main
from lofi.train.checkpoint import load_checkpoint
from planner.plan_file import save_plan
from train_helpers import data_args, make_tiny_dataset, tiny_candidate, tiny_plan


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("synth") / "data")


def lofi_cli(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "lofi", "train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_a_run_from_a_plan_file_prints_the_metrics(tiny_data, tmp_path):
    save_plan(tiny_plan(), tmp_path / "plan.json")
    result = CliRunner().invoke(main, ["train", "--plan", str(tmp_path / "plan.json"), *data_args(tiny_data),
                                       "--epochs", "1", "--head-epochs", "1", "--runs-dir", str(tmp_path / "runs"),
                                       "--freeze-bn"])
    assert result.exit_code == 0, result.output
    assert "Detection mAP" in result.output and "AUC" in result.output
    assert (tmp_path / "runs" / "lofi" / "summary.json").exists()

    again = CliRunner().invoke(main, ["train", "--plan", str(tmp_path / "plan.json"), *data_args(tiny_data),
                                      "--runs-dir", str(tmp_path / "runs"), "--name", "lofi"])
    assert again.exit_code == 2 and "already holds a run" in again.output

    only_eval = CliRunner().invoke(main, ["train", "--stage", "eval", "--runs-dir", str(tmp_path / "runs")])
    assert only_eval.exit_code == 0, only_eval.output
    assert "Detection mAP" in only_eval.output


@pytest.mark.parametrize("args, message", [
    (["--resume"], "holds no run to continue"),
    ([], "give --auto"),
    (["--auto", "--annotations", "missing.json", "--videos", "."], "missing.json"),
    (["--auto", "--videos", "."], "need --annotations"),
    (["--plan", "nope.json"], "nope.json"),
    (["--gpus", "0", "--auto"], "--gpus must be >= 1"),
])
def test_bad_options_give_one_clear_error(tmp_path, args, message):
    result = CliRunner().invoke(main, ["train", *args, "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_sigterm_finishes_the_step_checkpoints_and_resume_completes(tiny_data, tmp_path):
    import json
    import signal
    import time

    save_plan(tiny_plan(tiny_candidate(batch_per_gpu=1)), tmp_path / "plan.json")
    args = [*data_args(tiny_data), "--plan", str(tmp_path / "plan.json"), "--stage", "lofi", "--epochs", "15",
            "--freeze-bn", "--runs-dir", str(tmp_path / "runs"), "--name", "run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "lofi", "train", *args], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "runs" / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "--resume" in stderr and "Traceback" not in stderr
    stopped = load_checkpoint(tmp_path / "runs" / "run" / "lofi").state
    assert 1 <= stopped["step"] < 60

    resumed = lofi_cli(["--resume", "--stage", "lofi", "--runs-dir", str(tmp_path / "runs"), "--name", "run"],
                       tmp_path)  # the run's own config.json: 15 epochs
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = load_checkpoint(tmp_path / "runs" / "run" / "lofi").state
    assert final["step"] == 60 and final["epoch"] == 15  # 4 videos, batch 1, 15 epochs
    events = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert any(e.get("event") == "resumed" for e in events)


def test_each_rank_gets_the_plan_file_instead_of_auto_and_gpus():
    from pathlib import Path

    from lofi.train.launch import child_args

    argv = ["train", "--auto", "--gpus", "2", "--plan=old.json", "--name", "run", "--gpus=2", "--epochs", "1"]
    assert child_args(argv, Path("runs/.run.plan.json")) == ["--name", "run", "--epochs", "1", "--plan",
                                                               "runs/.run.plan.json"]
