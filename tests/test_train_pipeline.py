"""The whole pipeline on CPU at tiny sizes: LoFi -> features -> head -> eval, the run
folder it leaves, resuming after an interruption, and the baseline."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from lofi.errors import CheckpointError
from lofi.train.checkpoint import load_checkpoint
from lofi.train.config import OptimConfig, config_from_dict, encoder_bn_mode
from lofi.train.distributed import setup_distributed
from lofi.train.lofi_stage import model_from_checkpoint
from lofi.train.loop import StopRequest
from lofi.train.pipeline import run_pipeline
from lofi.train.run_folder import RunFolder
from train_helpers import make_tiny_dataset, tiny_config, tiny_plan


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("synth") / "data")


def test_two_epoch_run_goes_through_all_four_stages(tiny_data, tmp_path):
    run = RunFolder(tmp_path / "run")
    result = run_pipeline(tiny_config(tiny_data), tiny_plan(), run, setup_distributed(prefer_cuda=False))
    assert not result.interrupted
    summary = json.loads(run.summary.read_text())
    assert summary["stages"]["lofi"]["epochs"] == 2 and summary["stages"]["lofi"]["steps"] == 4
    assert summary["stages"]["features"]["extracted"] == 6
    assert summary["stages"]["head"]["completed"]
    detection = summary["metrics"]["detection"]
    assert 0.0 <= detection["average_mAP"] <= 1.0 and len(detection["mAP"]) == 10
    assert 0.0 <= summary["metrics"]["proposals"]["AUC"] <= 1.0
    results = json.loads(run.results.read_text())["results"]
    assert results and all(len(entries) > 0 for entries in results.values())
    stored = torch.load(next(run.features.glob("synth_*.pt")), weights_only=True)
    assert stored["features"].shape == (512, 8)  # (C, full-fidelity TR)
    assert stored["encoder"].startswith("lofi:tsm_r18:") and stored["fidelity"] == [8, 32, 2]
    for path in (run.config, run.plan, run.metrics, run.proposals):
        assert path.exists()


def test_interrupted_and_resumed_run_ends_with_the_same_weights(tiny_data, tmp_path):
    config = tiny_config(tiny_data)
    context = setup_distributed(prefer_cuda=False)
    whole = RunFolder(tmp_path / "whole")
    run_pipeline(config, tiny_plan(), whole, context, stages=("lofi",))

    parts = RunFolder(tmp_path / "parts")
    with StopRequest() as stop:
        first = run_pipeline(config, tiny_plan(), parts, context, stages=("lofi",), stop=stop,
                             on_step=lambda step: stop.request("test") if step == 3 else None)
    assert first.interrupted
    assert load_checkpoint(parts.lofi_checkpoints).state["step"] == 3
    second = run_pipeline(config, tiny_plan(), parts, context, stages=("lofi",), resume=True)
    assert not second.interrupted

    expected = load_checkpoint(whole.lofi_checkpoints).state["model"]
    resumed = load_checkpoint(parts.lofi_checkpoints).state["model"]
    assert expected.keys() == resumed.keys()
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=0, msg=key)


def test_a_checkpoint_rebuilds_its_model_and_refuses_a_contradicting_resume(tiny_data, tmp_path):
    config = tiny_config(tiny_data, pretrained=None, bn_mode="partial")
    context = setup_distributed(prefer_cuda=False)
    run = RunFolder(tmp_path / "run")
    with StopRequest() as stop:
        run_pipeline(config, tiny_plan(), run, context, stages=("lofi",), stop=stop,
                     on_step=lambda step: stop.request("test"))
    loaded = load_checkpoint(run.lofi_checkpoints)
    stored = config_from_dict(loaded.state["config"])
    assert stored == config  # what config.json holds: encoder, head, pretrained, BN mode, recipes
    assert (stored.backbone, stored.pretrained, encoder_bn_mode(stored)) == ("tsm_r18", None, "partial")
    # Rebuilt from the checkpoint alone: a wrong fallback config is not consulted.
    model, used = model_from_checkpoint(loaded.state, loaded.path, fallback=replace(config, backbone="tsm_r50"),
                                        device=torch.device("cpu"))
    assert used == config and model.encoder.bn_mode == "partial"
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, loaded.state["model"][key], rtol=0, atol=0, msg=key)

    before = run.config.read_bytes()
    with pytest.raises(CheckpointError, match=r"latest\.pt: written with bn_mode 'partial', but this run's config "
                                              r"has 'frozen'.*config\.json"):
        run_pipeline(replace(config, bn_mode="frozen"), tiny_plan(), run, context, stages=("lofi",), resume=True)
    assert run.config.read_bytes() == before  # the run's config.json is kept


def test_baseline_skips_the_lofi_stage(tiny_data, tmp_path):
    run = RunFolder(tmp_path / "baseline")
    config = tiny_config(tiny_data, baseline=True)
    result = run_pipeline(config, tiny_plan(), run, setup_distributed(prefer_cuda=False))
    assert "lofi" not in result.summary["stages"]
    assert result.summary["stages"]["features"]["encoder"].startswith("baseline:")
    assert not run.lofi_checkpoints.exists()


def test_a_short_c_lofi_cycle_trains_one_model_at_several_fidelities(tiny_data, tmp_path):
    from planner.fidelity import Fidelity
    from train_helpers import tiny_candidate

    cycle = (Fidelity(4, 32, 2), Fidelity(6, 32, 2))
    candidate = tiny_candidate(fidelity=None, cycle=cycle, batch_per_gpu=1, accumulation=1)
    config = tiny_config(tiny_data, cycle="short", short_cycle_batches=1, log_every=1)
    run = RunFolder(tmp_path / "cycle")
    run_pipeline(config, tiny_plan(candidate), run, setup_distributed(prefer_cuda=False), stages=("lofi",))
    logged = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    fidelities = {record["fidelity"] for record in logged if record.get("stage") == "lofi" and "fidelity" in record}
    assert fidelities == {"4/32", "6/32"}  # batches alternate between the cycle's members
    assert load_checkpoint(run.lofi_checkpoints).state["step"] == 8  # 4 videos x 2 epochs, batch 1


def test_corrupt_and_missing_videos_are_skipped_counted_and_listed(tiny_data, tmp_path):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(tiny_data.root, copy)
    annotations = json.loads((copy / "annotations.json").read_text())
    training = sorted(v for v, e in annotations["database"].items() if e["subset"] == "training")
    video = copy / "videos" / f"{training[0]}.mp4"
    video.write_bytes(video.read_bytes()[:300])  # truncated
    (copy / "videos" / f"{training[1]}.mp4").unlink()  # missing
    from lofi.data.synth import SynthPaths

    paths = SynthPaths.under(copy)
    run = RunFolder(tmp_path / "run")
    result = run_pipeline(tiny_config(paths), tiny_plan(), run, setup_distributed(prefer_cuda=False))
    data = result.summary["data"]
    assert (data["missing"], data["unreadable"], data["found"]) == (1, 1, 4)
    problems = (run.root / "media_problems.txt").read_text()
    assert training[0] in problems and training[1] in problems
    assert result.summary["stages"]["lofi"]["completed"]


class _SignalDuringFeatures:
    """A progress sink that sends this process a real SIGTERM once the features stage
    has written its first batch."""

    def __init__(self) -> None:
        self.stage = None
        self.sent_at = None

    def start(self, description, total):
        self.stage = description

    def advance(self, steps=1, **fields):
        import os
        import signal
        import time

        if self.stage == "features" and self.sent_at is None:
            self.sent_at = time.perf_counter()
            os.kill(os.getpid(), signal.SIGTERM)

    def stop(self):
        pass


def test_sigterm_during_features_stops_at_once_and_resume_reuses_every_file(tiny_data, tmp_path):
    import time

    config = tiny_config(tiny_data, feature_batch=1)
    context = setup_distributed(prefer_cuda=False)
    run = RunFolder(tmp_path / "run")
    progress = _SignalDuringFeatures()
    with StopRequest() as stop:
        first = run_pipeline(config, tiny_plan(), run, context, stop=stop, progress=progress)
    stopped_after = time.perf_counter() - progress.sent_at
    assert first.interrupted and stop.signal_name == "SIGTERM"
    assert stopped_after < 5.0
    assert first.summary["stages"]["features"] == {**first.summary["stages"]["features"], "completed": False,
                                                   "extracted": 1}
    assert "head" not in first.summary["stages"] and not run.head_checkpoints.exists()
    written = sorted(run.features.glob("*.pt"))
    assert len(written) == 1 and not (run.features / "index.json").exists()  # the index is no longer the record
    stale = run.features / ".synth_0002.pt.x1y2.tmp"  # what a crash mid-write leaves
    stale.write_bytes(b"half a file")

    second = run_pipeline(config, tiny_plan(), run, context, resume=True)
    assert not second.interrupted
    features = second.summary["stages"]["features"]
    assert features["reused"] == 1 and features["extracted"] == 5
    assert not stale.exists() and not list(run.features.glob(".*.tmp"))
    assert second.summary["stages"]["head"]["completed"] and "metrics" in second.summary


class _SignalDuringStage(_SignalDuringFeatures):
    def __init__(self, stage: str) -> None:
        super().__init__()
        self.target = stage

    def advance(self, steps=1, **fields):
        import os
        import signal
        import time

        if self.stage == self.target and self.sent_at is None:
            self.sent_at = time.perf_counter()
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_mid_head_epoch_checkpoints_its_position_and_resume_matches(tiny_data, tmp_path):
    import shutil

    one_epoch = OptimConfig("adam", lr=1e-3, epochs=1, step_epochs=1, gamma=0.5)
    config = tiny_config(tiny_data, head_stage=one_epoch)  # 4 training videos: 2 batches of 2
    context = setup_distributed(prefer_cuda=False)
    base = RunFolder(tmp_path / "base")
    run_pipeline(config, tiny_plan(), base, context, stages=("lofi", "features"))
    whole, parts = RunFolder(tmp_path / "whole"), RunFolder(tmp_path / "parts")
    shutil.copytree(base.root, whole.root)
    shutil.copytree(base.root, parts.root)
    run_pipeline(config, tiny_plan(), whole, context, stages=("head",))

    with StopRequest() as stop:
        first = run_pipeline(config, tiny_plan(), parts, context, stages=("head",), stop=stop,
                             progress=_SignalDuringStage("head"))
    assert first.interrupted
    state = load_checkpoint(parts.head_checkpoints).state
    assert state["epoch"] == 0 and state["batches_done"] == 1 and state["step"] == 1
    run_pipeline(config, tiny_plan(), parts, context, stages=("head",), resume=True)
    expected = load_checkpoint(whole.head_checkpoints).state["model"]
    resumed = load_checkpoint(parts.head_checkpoints).state
    assert resumed["step"] == 2
    for key in expected:
        torch.testing.assert_close(resumed["model"][key], expected[key], rtol=0, atol=0, msg=key)


def test_offload_trains_exactly_the_weights_of_none(tiny_data, tmp_path):
    # `lofi train`'s own path (build_lofi_model from the plan's candidate): save_on_cpu per
    # encoder block changes where saved tensors live, not what is computed
    from train_helpers import tiny_candidate

    config = tiny_config(tiny_data, lofi=OptimConfig("sgd", lr=0.05, epochs=1, step_epochs=1, gamma=0.5))
    context = setup_distributed(prefer_cuda=False)
    weights = {}
    for policy in ("none", "offload"):
        run = RunFolder(tmp_path / policy)
        run_pipeline(config, tiny_plan(tiny_candidate(checkpointing=policy)), run, context, stages=("lofi",))
        assert json.loads(run.plan.read_text())["chosen"]["checkpointing"] == policy
        weights[policy] = load_checkpoint(run.lofi_checkpoints).state["model"]
    for name, value in weights["none"].items():
        assert torch.equal(weights["offload"][name], value), name


def test_lofi_trains_with_the_plans_blocks_policy_and_records_its_blocks(tiny_data, tmp_path):
    """A plan that chose blocks:3: the trainer's encoder checkpoints the blocks that the
    planner's workload traced for that candidate, and the run folder records them."""
    from lofi.models.encoders import checkpoint_order
    from lofi.plan_workload import lofi_workload
    from planner.plan_file import load_plan
    from planner.workload import step_specs
    from train_helpers import tiny_candidate

    candidate = tiny_candidate(checkpointing="blocks:3", batch_per_gpu=1, accumulation=1)
    run = RunFolder(tmp_path / "blocks")
    run_pipeline(tiny_config(tiny_data), tiny_plan(candidate), run, setup_distributed(prefer_cuda=False), stages=("lofi",))
    lofi = json.loads(run.summary.read_text())["stages"]["lofi"]
    planned = lofi_workload().build_model(step_specs(candidate, "cuda")[0].model, torch.device("meta")).encoder
    names = planned.block_names()
    assert lofi["checkpointing"] == "blocks:3" and lofi["steps"] > 0
    assert tuple(lofi["checkpointed_blocks"]) == planned.checkpointed_blocks
    assert set(lofi["checkpointed_blocks"]) == {names[i] for i in checkpoint_order("tsm_r18")[:3]}
    assert load_plan(run.plan).chosen.checkpointing == "blocks:3"
