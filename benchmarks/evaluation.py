"""Seconds that `lofi.evaluation` takes for ActivityNet detection mAP and proposal AR@AN at
the real scale, and, when the official code is at hand, the speed ratio on the same files.

    python benchmarks/evaluation.py                        # 4,728 videos x 100 detections
    python benchmarks/evaluation.py --videos 300 \\
        --official /tmp/official --official-python /tmp/offvenv/bin/python

Input: the validation videos of ../shared/data/activitynet/activitynet13_gt.json (the
first --videos of them), each with --per-video detections: for every ground-truth segment
a few jittered copies (its label 80 % of the time), the rest random segments; labels
among the 200 classes, scores uniform. The same results file serves as proposals (labels
ignored). Times include reading and checking the JSON files, as a user's run does; the
median over --repeats runs is reported.

--official DIR: a Python 3 port of activitynet/ActivityNet `Evaluation/eval_detection.py`,
`eval_proposal.py`, `utils.py` (print(), items(), np.float -> float, np.trapz ->
np.trapezoid, joblib with n_jobs from $OFFICIAL_N_JOBS, default 1); --official-python: an
interpreter with pandas and joblib (default: this one). It runs once (it is slow), on the
same files, and its numbers are compared with lofi's.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from lofi.evaluation import evaluate_detection, evaluate_proposals, load_ground_truth, load_predictions

REPO = Path(__file__).resolve().parent.parent
DEFAULT_GT = REPO.parent / "shared" / "data" / "activitynet" / "activitynet13_gt.json"

OFFICIAL_SCRIPT = """
import json, sys, time, warnings
import numpy as np
sys.path.insert(0, sys.argv[1])
warnings.simplefilter("ignore")
from eval_detection import ANETdetection
from eval_proposal import ANETproposal
gt, pred = sys.argv[2], sys.argv[3]
t0 = time.perf_counter()
det = ANETdetection(gt, pred, subset="validation", check_status=False)
det.evaluate()
t1 = time.perf_counter()
prop = ANETproposal(gt, pred, subset="validation", max_avg_nr_proposals=100, check_status=False)
prop.evaluate()
t2 = time.perf_counter()
print(json.dumps({"detection_s": t1 - t0, "proposal_s": t2 - t1, "mAP": det.mAP.tolist(),
                  "avg_recall": prop.avg_recall.tolist()}))
"""


def make_inputs(gt_path: Path, videos: int | None, per_video: int, seed: int, folder: Path):
    """Write gt.json (the chosen validation videos) and pred.json into `folder`."""
    with gt_path.open() as handle:
        data = json.load(handle)
    chosen = [(vid, v) for vid, v in data["database"].items() if v["subset"] == "validation"]
    chosen = chosen[:videos] if videos else chosen
    classes = sorted({a["label"] for _, v in chosen for a in v["annotations"]})
    rng = np.random.default_rng(seed)
    results = {}
    for vid, video in chosen:
        duration = float(video.get("duration") or 100.0)
        rows = []
        for annotation in video["annotations"]:
            s, e = annotation["segment"]
            length = max(e - s, 1e-3)
            for _ in range(min(8, per_video // (2 * max(1, len(video["annotations"]))))):
                a, b = sorted((s + rng.normal(0, 0.15) * length, e + rng.normal(0, 0.15) * length))
                label = annotation["label"] if rng.random() < 0.8 else classes[rng.integers(len(classes))]
                rows.append({"label": label, "score": float(rng.random()), "segment": [a, b]})
        while len(rows) < per_video:
            a, b = sorted(rng.uniform(0, duration, 2).tolist())
            rows.append({"label": classes[rng.integers(len(classes))], "score": float(rng.random()),
                         "segment": [a, b]})
        results[vid] = rows[:per_video]
    gt_file, pred_file = folder / "gt.json", folder / "pred.json"
    gt_file.write_text(json.dumps({"version": data.get("version", ""), "taxonomy": data.get("taxonomy", []),
                                   "database": dict(chosen)}))
    pred_file.write_text(json.dumps({"version": "VERSION 1.3", "results": results, "external_data": {}}))
    return gt_file, pred_file, len(chosen), sum(map(len, results.values()))


def time_lofi(gt_file: Path, pred_file: Path):
    """(load_s, detection_s, proposal_s, detection result, proposal result)."""
    start = time.perf_counter()
    gt = load_ground_truth(gt_file)
    predictions = load_predictions(pred_file)
    loaded = time.perf_counter()
    detection = evaluate_detection(gt, predictions)
    detected = time.perf_counter()
    proposals = evaluate_proposals(gt, predictions, max_proposals=100)
    done = time.perf_counter()
    return loaded - start, detected - loaded, done - detected, detection, proposals


@click.command()
@click.option("--gt", "gt_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=DEFAULT_GT, show_default=True)
@click.option("--videos", type=click.IntRange(min=1), default=None, help="First N validation videos [all].")
@click.option("--per-video", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--official", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None)
@click.option("--official-python", default=sys.executable, show_default=True)
def main(gt_path, videos, per_video, repeats, seed, official, official_python) -> None:
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        gt_file, pred_file, n_videos, n_pred = make_inputs(gt_path, videos, per_video, seed, Path(tmp))
        console.print(f"{n_videos} validation videos, {n_pred} detections "
                      f"({pred_file.stat().st_size / 2**20:.1f} MiB); {os.cpu_count()} CPUs")
        runs = [time_lofi(gt_file, pred_file) for _ in range(repeats)]
        load = statistics.median(r[0] for r in runs)
        det = statistics.median(r[1] for r in runs)
        prop = statistics.median(r[2] for r in runs)
        detection, proposals = runs[-1][3], runs[-1][4]
        table = Table(title="lofi.evaluation (median of %d runs)" % repeats, title_justify="left")
        for column in ("task", "load JSON + check (s)", "evaluate (s)", "total (s)", "result"):
            table.add_column(column, justify="left" if column in ("task", "result") else "right")
        table.add_row("detection", f"{load:.2f}", f"{det:.2f}", f"{load + det:.2f}",
                      f"average mAP {100 * detection.average_mAP:.2f} %")
        table.add_row("proposals", f"{load:.2f}", f"{prop:.2f}", f"{load + prop:.2f}",
                      f"AR@100 {100 * proposals.ar_at[100]:.2f} %, AUC {100 * proposals.auc:.2f} %")
        console.print(table)
        if official is None:
            return
        console.print("running the official code once (slow) ...")
        completed = subprocess.run(
            [official_python, "-c", OFFICIAL_SCRIPT, str(official), str(gt_file), str(pred_file)],
            capture_output=True, text=True, check=False)
        if completed.returncode:
            raise SystemExit(f"the official code failed:\n{completed.stderr[-2000:]}")
        theirs = json.loads(completed.stdout.strip().splitlines()[-1])
    ratio = Table(title="official / lofi, same files, load + evaluate", title_justify="left")
    for column in ("task", "official (s)", "lofi (s)", "speed-up", "max |difference|"):
        ratio.add_column(column, justify="left" if column == "task" else "right")
    det_diff = float(np.max(np.abs(np.asarray(theirs["mAP"]) - detection.mAP)))
    prop_diff = float(np.max(np.abs(np.asarray(theirs["avg_recall"]) - proposals.avg_recall)))
    ratio.add_row("detection", f"{theirs['detection_s']:.1f}", f"{load + det:.2f}",
                  f"{theirs['detection_s'] / (load + det):.0f}x", f"{det_diff:.1e}")
    ratio.add_row("proposals", f"{theirs['proposal_s']:.1f}", f"{load + prop:.2f}",
                  f"{theirs['proposal_s'] / (load + prop):.0f}x", f"{prop_diff:.1e}")
    console.print(ratio)


if __name__ == "__main__":
    main()
