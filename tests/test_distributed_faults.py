"""Faults across ranks, with real gloo process groups (torch.multiprocessing, the same
set-up as under torchrun): a rank that dies or stops answering makes the others fail
with one clear error instead of hanging, and a CUDA out-of-memory error on one rank is
agreed on by all of them before they fall back to the same smaller candidate."""

from __future__ import annotations

import json
import os
import time
import traceback

import pytest
import torch
import torch.multiprocessing as mp

from train_helpers import free_port, make_tiny_dataset, tiny_candidate, tiny_config, tiny_plan


def _join(rank: int, port: int, env: dict[str, str]):
    """What torchrun sets for a rank of a 2-process run on one node, then lofi's set-up."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", OMP_NUM_THREADS="1", **env)
    torch.set_num_threads(1)
    from lofi.train.distributed import setup_distributed

    return setup_distributed(prefer_cuda=False)


def _run_ranks(target, *args, timeout: float) -> list[int | None]:
    """Start two spawned processes `target(rank, *args)`; their exit codes (None: still
    running after `timeout`, then killed)."""
    spawn = mp.get_context("spawn")
    processes = [spawn.Process(target=target, args=(rank, *args)) for rank in (0, 1)]
    for process in processes:
        process.start()
    deadline = time.time() + timeout
    for process in processes:
        process.join(max(0.0, deadline - time.time()))
    codes = [process.exitcode for process in processes]
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
    return codes


def _report(folder: str, rank: int, **values) -> None:
    with open(os.path.join(folder, f"rank{rank}.json"), "w") as file:
        json.dump(values, file)


def _read(folder, rank: int) -> dict:
    return json.loads((folder / f"rank{rank}.json").read_text())


def _dead_or_silent_peer(rank: int, port: int, folder: str, fault: str) -> None:
    from lofi.train.distributed import RankFailure, agree, barrier, teardown_distributed

    context = _join(rank, port, {"LOFI_COLLECTIVE_TIMEOUT": "2"})
    barrier(context)
    if rank == 1:
        if fault == "dies":
            os._exit(3)  # what a segfault or kill -9 leaves: no goodbye
        time.sleep(5)  # alive, but never joins the next collective
        os._exit(0)
    started = time.perf_counter()
    try:
        agree(context, False, what="a LoFi step")
        _report(folder, rank, error=None, seconds=time.perf_counter() - started)
    except RankFailure as error:
        _report(folder, rank, error=str(error), seconds=time.perf_counter() - started)
    teardown_distributed()


@pytest.mark.parametrize("fault", ["dies", "stops answering"])
def test_a_lost_rank_makes_the_other_fail_with_a_clear_error_not_a_hang(tmp_path, fault):
    codes = _run_ranks(_dead_or_silent_peer, free_port(), str(tmp_path), fault, timeout=60)
    assert codes[0] == 0  # it returned, with the error in hand
    report = _read(tmp_path, 0)
    assert report["error"] is not None
    assert report["error"].startswith("another process of this run stopped answering during a LoFi step")
    assert "--resume continues" in report["error"] and "\n" not in report["error"]
    assert report["seconds"] < 30  # the 2 s collective timeout, not the 10 min default


def _oom_on_rank_one(rank: int, port: int, folder: str, paths) -> None:
    from pathlib import Path

    from lofi.train import lofi_stage
    from lofi.train.config import OptimConfig
    from lofi.train.distributed import teardown_distributed
    from lofi.train.pipeline import run_pipeline
    from lofi.train.run_folder import RunFolder

    context = _join(rank, port, {})
    real_step = lofi_stage._micro_step
    if rank == 1:  # the fault: only this rank's GPU is too small for the first candidate
        def failing_step(model, batch, candidate, *args):
            if candidate.batch_per_gpu == 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
            return real_step(model, batch, candidate, *args)

        lofi_stage._micro_step = failing_step
    config = tiny_config(paths, lofi=OptimConfig("sgd", lr=0.05, epochs=1, step_epochs=1, gamma=0.5))
    first = tiny_candidate(batch_per_gpu=2, gpus=2)
    second = tiny_candidate(batch_per_gpu=1, gpus=2, accumulation=2)  # the same global batch of 4
    plan = tiny_plan(first, second, sizes=(2.0, 1.0))  # made for the first candidate's 2 GPUs
    try:
        result = run_pipeline(config, plan, RunFolder(Path(folder) / "run"), context, stages=("lofi",))
        _report(folder, rank, lofi=result.summary["stages"]["lofi"])
    except Exception:
        _report(folder, rank, error=traceback.format_exc())
    teardown_distributed()


def test_an_oom_on_one_rank_is_agreed_on_and_every_rank_falls_back_together(tmp_path):
    from lofi.plan_axes import describe

    paths = make_tiny_dataset(tmp_path / "data")
    second = tiny_candidate(batch_per_gpu=1, gpus=2, accumulation=2)  # the candidate the ranks fall back to
    assert _run_ranks(_oom_on_rank_one, free_port(), str(tmp_path), paths, timeout=240) == [0, 0]
    reports = [_read(tmp_path, rank) for rank in (0, 1)]
    for report in reports:
        assert "error" not in report, report.get("error")
        lofi = report["lofi"]
        assert lofi["completed"] and lofi["steps"] == 1  # 4 training videos, global batch 4, 1 epoch
        assert [f["to"] for f in lofi["fallbacks"]] == [describe(second)]
    assert "another rank" in reports[0]["lofi"]["fallbacks"][0]["error"]
    assert "injected" in reports[1]["lofi"]["fallbacks"][0]["error"]
