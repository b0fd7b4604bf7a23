"""The whole pipeline under torchrun with gloo processes on the CPU: two processes end
with the metrics of one process at the same global batch; SIGTERM to the launcher stops
every rank with a checkpoint and a resume under another world size finishes the run;
two "nodes" meet through torchrun's c10d rendezvous on localhost; a plan for another
world is refused with one clear line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from lofi.models.encoders import build_encoder
from lofi.train.checkpoint import load_checkpoint
from planner.plan_file import save_plan
from train_helpers import data_args, free_port, make_tiny_dataset, tiny_candidate, tiny_plan

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "LOFI_COLLECTIVE_TIMEOUT": "120"}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("synth") / "data")


def run_args(paths):
    return [*data_args(paths), "--freeze-bn", "--lr", "0.05"]


def lofi_train(args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "lofi", "train", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout, check=False)


def two_nodes(args, cwd, rdzv_id, timeout):
    """`lofi train args` as two torchrun "nodes" of one process each on localhost, joined
    by torchrun's c10d rendezvous; [(returncode, stderr)] of both."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", rdzv_id,
               "-m", "lofi", "train", *args]
    nodes = [subprocess.Popen(command, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errors = [node.communicate(timeout=timeout)[1] for node in nodes]
    return [(node.returncode, stderr) for node, stderr in zip(nodes, errors)]


def plan_for(tmp_path, name, *, batch, gpus=1, nodes=1):
    plan = tiny_plan(tiny_candidate(batch_per_gpu=batch, gpus=gpus, nodes=nodes))
    path = tmp_path / f"{name}.json"
    save_plan(plan, path)
    return path


def summary_of(tmp_path, name):
    return json.loads((tmp_path / "runs" / name / "summary.json").read_text())


def assert_same_metrics(a, b):
    """Every number of the detection and proposal results equal within float tolerance."""
    assert a["metrics"]["proposals"]["AUC"] > 0  # something to compare
    for kind in ("detection", "proposals"):
        left, right = a["metrics"][kind], b["metrics"][kind]
        for key, value in left.items():
            if isinstance(value, float) or (isinstance(value, list) and value and isinstance(value[0], float)):
                assert right[key] == pytest.approx(value, abs=1e-4), (kind, key)


@pytest.fixture(scope="module")
def single_run(tiny_data, tmp_path_factory):
    """One process, global batch 2 (2 x 1 x 1), all four stages."""
    root = tmp_path_factory.mktemp("single")
    plan = plan_for(root, "single", batch=2)
    common = [*run_args(tiny_data), "--epochs", "1", "--head-epochs", "1", "--runs-dir", str(root / "runs")]
    result = lofi_train([*common, "--plan", str(plan), "--name", "one"], root)
    assert result.returncode == 0, result.stderr[-3000:]
    return {**summary_of(root, "one"), "folder": root / "runs" / "one"}


def test_two_gloo_processes_run_all_four_stages_with_the_metrics_of_one(tiny_data, single_run, tmp_path):
    plan = plan_for(tmp_path, "double", batch=1, gpus=2)
    args = [*run_args(tiny_data), "--epochs", "1", "--head-epochs", "1", "--runs-dir", str(tmp_path / "runs"),
            "--plan", str(plan), "--name", "two", "--gpus", "2"]
    result = lofi_train(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    two = summary_of(tmp_path, "two")
    assert not two["interrupted"]
    assert two["stages"]["lofi"]["steps"] == single_run["stages"]["lofi"]["steps"] == 2
    # the loss reported is the global batch's, whatever the split
    assert two["stages"]["lofi"]["last_loss"] == pytest.approx(single_run["stages"]["lofi"]["last_loss"], rel=1e-4)
    assert two["stages"]["features"]["ranks"] == 2
    assert two["stages"]["features"]["extracted"] == single_run["stages"]["features"]["extracted"] == 6
    assert two["stages"]["head"]["last_loss"] == pytest.approx(single_run["stages"]["head"]["last_loss"], rel=1e-3)
    assert_same_metrics(single_run, two)
    # the LoFi stage's weights too: gradients averaged over ranks = the global batch's
    a = load_checkpoint(single_run["folder"] / "lofi").state
    b = load_checkpoint(tmp_path / "runs" / "two" / "lofi").state
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    torch.manual_seed(0)  # the trainer's seed: the weights both runs started from
    assert not torch.allclose(a["model"]["encoder.conv1.weight"], build_encoder("tsm_r18").conv1.weight)
    # rank 0 alone wrote the run-level files: every metrics line once
    events = [json.loads(line) for line in (tmp_path / "runs" / "two" / "metrics.jsonl").read_text().splitlines()]
    assert sum(1 for e in events if e.get("event") == "epoch" and e.get("stage") == "lofi") == 1


def test_sigterm_to_the_launcher_stops_every_rank_and_a_one_process_resume_finishes(tiny_data, single_run,
                                                                                   tmp_path):
    plan = plan_for(tmp_path, "double", batch=1, gpus=2)
    runs = tmp_path / "runs"
    args = [*run_args(tiny_data), "--epochs", "3", "--head-epochs", "1", "--runs-dir", str(runs),
            "--plan", str(plan), "--name", "run", "--gpus", "2", "--checkpoint-every", "1"]
    launcher = subprocess.Popen([sys.executable, "-m", "lofi", "train", *args], cwd=tmp_path, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = runs / "run" / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and not (metrics.exists() and '"step"' in metrics.read_text()):
        time.sleep(0.2)
    signalled = time.time()
    launcher.send_signal(signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=120)
    assert time.time() - signalled < 60, stderr[-2000:]
    assert launcher.returncode == 130, stderr[-3000:]
    assert "--resume" in stderr
    stopped = load_checkpoint(runs / "run" / "lofi").state
    assert 1 <= stopped["step"] < 6  # 4 training videos, global batch 2, 3 epochs
    assert not (runs / "run" / "summary.json").exists() or json.loads(
        (runs / "run" / "summary.json").read_text())["interrupted"]

    # the same run folder, one process now: the plan is re-derived for the new world
    # (batch 1 x 2 accumulation steps keeps the global batch of 2) and the run finishes
    resumed = lofi_train(["--resume", "--runs-dir", str(runs), "--name", "run"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = summary_of(tmp_path, "run")
    assert not summary["interrupted"]
    assert load_checkpoint(runs / "run" / "lofi").state["step"] == 6
    assert summary["metrics"]["proposals"]["AUC"] >= 0.0
    stored_plan = json.loads((runs / "run" / "plan.json").read_text())
    assert stored_plan["gpus"] == 1


def test_two_nodes_meet_through_the_c10d_rendezvous_on_localhost(tiny_data, single_run, tmp_path):
    plan = plan_for(tmp_path, "nodes", batch=1, gpus=1, nodes=2)
    args = [*run_args(tiny_data), "--epochs", "1", "--head-epochs", "1", "--runs-dir", str(tmp_path / "runs"),
            "--plan", str(plan), "--name", "nodes"]
    for code, stderr in two_nodes(args, tmp_path, "lofi-test", timeout=300):
        assert code == 0, stderr[-3000:]
    summary = summary_of(tmp_path, "nodes")
    assert summary["stages"]["features"]["ranks"] == 2
    assert_same_metrics(single_run, summary)


def test_a_plan_for_another_number_of_nodes_is_one_clear_error():
    from lofi.errors import OptionError
    from lofi.train.plan_check import check_world

    plan = tiny_plan(tiny_candidate(batch_per_gpu=1, gpus=2))
    check_world(plan, gpus_per_node=2, nodes=1)
    with pytest.raises(OptionError, match=r"the plan is for 2 GPU\(s\) x 1 node\(s\) but this run has 1 "
                                          r"process\(es\) per node x 2 node\(s\)"):
        check_world(plan, gpus_per_node=1, nodes=2)  # the same world size, spread over two nodes


def test_gpus_n_with_a_plan_for_one_gpu_fails_with_one_line_and_no_traceback(tiny_data, tmp_path):
    plan = plan_for(tmp_path, "one_gpu", batch=2)
    result = lofi_train([*run_args(tiny_data), "--stage", "lofi", "--runs-dir", str(tmp_path / "runs"),
                         "--plan", str(plan), "--gpus", "2"], tmp_path)
    assert result.returncode == 2
    assert "the plan is for 1 GPU(s) x 1 node(s) but this run has 2 process(es) per node" in result.stderr
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr


def test_the_launcher_reports_the_code_that_says_most():
    from lofi.train.launch import exit_code

    assert exit_code([1, 2]) == 2  # a rank's user error over the others' "peer gone"
    assert exit_code([1, 130]) == 130
    assert exit_code([-9, 1]) == 137  # SIGKILL, as a shell reports it


def test_auto_plans_with_the_data_options_it_was_given_at_any_world_size(tiny_data):
    from lofi.train.options import DataOptions, PlanOptions, auto_plan, resolve_data

    resolved = resolve_data(DataOptions(str(tiny_data.annotations), str(tiny_data.videos_dir), None,
                                        str(tiny_data.classification), 8, 32, 2, 2))
    grids = {}
    for gpus in (1, 2):
        plan, _ = auto_plan(resolved, PlanOptions(gpu="cpu", gpus=gpus, backbones=("tsm_r18",)))
        assert plan.scope.gpus == gpus and plan.chosen.gpus == gpus
        grids[gpus] = {f for entry in plan.candidates for f in entry.candidate.fidelities}
        assert plan.chosen.global_batch == 16
    assert grids[1] == grids[2]
    # the paper's fidelities at this full fidelity: full and S (16 px, kept at the 32 px
    # floor) 8/32, ST 4/32, T and low (2 snippets, kept at the heads' floor of 4) 4/32
    assert {(f.tr, f.sr, f.frames_per_snippet) for f in grids[1]} == {(8, 32, 2), (4, 32, 2)}


def test_the_ranks_media_shares_merge_into_the_report_of_one_process(tiny_data, tmp_path):
    import shutil

    from lofi.data.annotations import load_annotations
    from lofi.data.media import check_media
    from lofi.data.synth import SynthPaths
    from lofi.train.pipeline import _merged

    copy = tmp_path / "data"
    shutil.copytree(tiny_data.root, copy)
    paths = SynthPaths.under(copy)
    annotations = load_annotations(paths.annotations)
    ids = [r.video_id for r in annotations.records]
    video = paths.videos_dir / f"{ids[0]}.mp4"
    video.write_bytes(video.read_bytes()[:300])  # unreadable, on rank 0's share
    (paths.videos_dir / f"{ids[3]}.mp4").unlink()  # missing, on rank 1's share
    whole = check_media(annotations.records, paths.videos_dir)
    parts = [check_media(annotations.records[rank::2], paths.videos_dir) for rank in (0, 1)]
    merged = _merged(parts, annotations)
    assert list(merged.found) == list(whole.found) and len(merged.found) == 4
    assert merged.missing == whole.missing == (ids[3],)
    assert [u.video_id for u in merged.unreadable] == [u.video_id for u in whole.unreadable] == [ids[0]]
    assert merged.listing() == whole.listing()
