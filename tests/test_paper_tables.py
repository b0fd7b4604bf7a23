"""benchmarks/paper_tables.py: the paper's fidelity reductions at synthetic scale, the
commands it runs, which runs count as finished (resume), and the table it writes."""

from __future__ import annotations

import json

import pytest

from benchmark_loader import load_benchmark
from planner.fidelity import Fidelity


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("paper_tables")


def test_settings_reduce_full_fidelity_as_the_paper(bench):
    settings = {s.key: s for s in bench.paper_settings(Fidelity(16, 64, 4))}
    assert list(settings) == ["acp", "s", "t", "st", "c-long", "c-short", "full"]
    assert settings["acp"].fidelities is None and "--baseline" in settings["acp"].options
    assert settings["s"].fidelities == (Fidelity(16, 32, 4),)  # r_s = 2
    assert settings["t"].fidelities == (Fidelity(4, 64, 4),)  # r_t = 4
    assert settings["st"].fidelities == (Fidelity(8, 46, 4),)  # r_t = 2, r_s = sqrt 2
    assert settings["c-short"].fidelities == (Fidelity(16, 32, 4), Fidelity(4, 64, 4), Fidelity(8, 46, 4))
    assert settings["c-short"].options == ("--cycle", "short")


def test_train_command_and_resume(bench, tmp_path):
    scale = bench.SCALES["quick"]
    acp = bench.paper_settings(scale.full)[0]
    command = bench.train_command(tmp_path, scale, acp, 2, resume=False)
    text = " ".join(command)
    assert "--baseline" in text and "--seed 2" in text and "--overwrite" in text
    assert f"--plan {tmp_path / 'plans' / 's.json'}" in text and "--pretrained" in text
    assert "--resume" in " ".join(bench.train_command(tmp_path, scale, acp, 2, resume=True))
    run = tmp_path / "run"
    run.mkdir()
    assert bench.finished(run) is None
    (run / "summary.json").write_text(json.dumps({"interrupted": True, "metrics": {}, "wall_seconds": 1}))
    assert bench.finished(run) is None
    (run / "summary.json").write_text(json.dumps({"interrupted": False, "metrics": {}, "wall_seconds": 1}))
    assert bench.finished(run) is not None


def test_table_rows_mean_and_std(bench):
    def summary(mAP, seconds):
        metrics = {"detection": {"average_mAP": mAP}, "proposals": {"AR@100": 0.5, "AUC": 0.4}}
        return {"metrics": metrics, "wall_seconds": seconds, "cpu_seconds": 2 * seconds,
                "stages": {"lofi": {"planned_reserved_bytes": 3 * 2**20}}}

    settings = bench.paper_settings(Fidelity(16, 64, 4))[1:2]
    runs = [summary(0.20, 60), summary(0.30, 120)]
    official = [r["metrics"] for r in (summary(0.19, 0), summary(0.28, 0))]
    (row,) = bench.table_rows(settings, {"s": runs}, {"s": official})
    assert row.startswith("| S-LoFi 16/32 | 2 | 25.00 ± 7.07 | 50.00 ± 0.00 | 40.00 ± 0.00 | 23.50 ± 6.36 (-1.50 ± 0.71)")
    assert row.endswith("| 1.50 ± 0.71 | 3.00 ± 1.41 | 3 MiB |")
    assert bench.mean_std([]) == "–" and bench.mean_std([1.0]) == "1.00" and bench.mean_std([1.0], signed=True) == "+1.00"
