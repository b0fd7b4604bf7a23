"""The paper's main comparisons (PAPER.md, LoFi results) at synthetic scale on the CPU:
ACP against S-, T-, ST-, long- and short-cycle C-LoFi and LoFi at full fidelity, TSM-R18
encoder, G-TAD head, over several seeds; mean +- std of average mAP, AR@100 and AUC,
each run's wall time and the planned memory of its LoFi stage, and the effect of the
official BMN/G-TAD proposal end rule. Writes a markdown table with the exact commands.

    python benchmarks/paper_tables.py                  # paper scale -> docs/paper-tables.md
    python benchmarks/paper_tables.py --scale quick    # minutes: checks the machinery only

Everything goes through the `lofi` CLI (one subprocess per step, the commands are in the
output) except the plans, made here with the planner's API for one fidelity (or the
C-LoFi cycle) each, and the second evaluation with the official end rule. Every run
starts from ONE pre-trained encoder (`lofi pretrain`, the role of the Kinetics weights),
so ACP and the LoFi variants differ only in the LoFi stage; the seed changes the LoFi
stage and the head. Interrupted? Run the same command again: finished runs (a
summary.json with metrics) are skipped, started ones resume from their checkpoints.

The synthetic scale (`SCALES`): the default synthetic dataset (90 training / 30
validation videos, 64 px, 8 fps), full fidelity 16 snippets x 64 px of 4 frames; S, T
and ST reduce it as the paper reduces 100 x 224 (r_s = 2; r_t = 4; r_t = 2 and
r_s = sqrt 2); LoFi and head epochs are chosen so that the 21 runs fit in an hour of a
2-core CPU.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from planner.atomic_files import atomic_write_json, atomic_write_text  # noqa: E402
from planner.fidelity import Fidelity  # noqa: E402


@dataclass(frozen=True)
class Scale:
    synth: tuple[str, ...]  # `lofi data synth` options
    full: Fidelity
    stride: int
    pretrain_epochs: int
    lofi_epochs: int
    head_epochs: int


SCALES = {
    "paper": Scale(synth=(), full=Fidelity(16, 64, 4), stride=8, pretrain_epochs=6, lofi_epochs=4, head_epochs=10),
    "quick": Scale(synth=("--videos", "8", "--classes", "2", "--min-duration", "8", "--max-duration", "12",
                          "--max-instances", "2"),
                   full=Fidelity(16, 64, 2), stride=2, pretrain_epochs=1, lofi_epochs=1, head_epochs=2),
}


@dataclass(frozen=True)
class Setting:
    key: str  # run-folder stem
    label: str  # table row
    fidelities: tuple[Fidelity, ...] | None  # one fidelity, or a C-LoFi cycle; None: ACP (no LoFi stage)
    options: tuple[str, ...] = ()


def paper_settings(full: Fidelity) -> list[Setting]:
    """ACP and the LoFi variants, the reductions of PAPER.md's fidelity table applied to
    `full` (ST: TR / 2 and SR / sqrt 2, rounded to an even size)."""
    s = replace(full, sr=full.sr // 2)
    t = replace(full, tr=max(4, full.tr // 4))
    st = replace(full, tr=full.tr // 2, sr=2 * round(full.sr / math.sqrt(2) / 2))
    cycle = (s, t, st)
    return [
        Setting("acp", "ACP (frozen pre-trained encoder)", None, ("--baseline",)),
        Setting("s", f"S-LoFi {s.label()}", (s,)),
        Setting("t", f"T-LoFi {t.label()}", (t,)),
        Setting("st", f"ST-LoFi {st.label()}", (st,)),
        Setting("c-long", "C-LoFi, long cycle", cycle, ("--cycle", "long")),
        Setting("c-short", "C-LoFi, short cycle", cycle, ("--cycle", "short")),
        Setting("full", f"LoFi at full fidelity {full.label()}", (full,)),
    ]


# -- commands ---------------------------------------------------------------------------

def lofi_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lofi", *args]


def shown(command: list[str]) -> str:
    """A command as the doc shows it (`python -m lofi ...`)."""
    return " ".join(["python", *command[1:]])


def data_args(root: Path, scale: Scale) -> list[str]:
    data = root / "data"
    return ["--annotations", str(data / "annotations.json"), "--videos", str(data / "videos"),
            "--full-tr", str(scale.full.tr), "--full-sr", str(scale.full.sr),
            "--frames-per-snippet", str(scale.full.frames_per_snippet), "--stride", str(scale.stride),
            "--no-flip"]


def train_command(root: Path, scale: Scale, setting: Setting, seed: int, *, resume: bool) -> list[str]:
    """`lofi train` for one run: the synthetic CPU recipes of lofi/train/config.py
    spelled out (the data is passed as a user's, so nothing is implicit)."""
    plan = root / "plans" / f"{'s' if setting.fidelities is None else setting.key}.json"
    args = ["train", "--plan", str(plan), *data_args(root, scale),
            "--classification", str(root / "data" / "classification.json"),
            "--pretrained", str(root / "pretrained" / "encoder.pt"),
            "--optimizer", "adam", "--lr", "1e-3", "--weight-decay", "1e-4", "--lr-step", "7", "--lr-gamma", "0.5",
            "--epochs", str(scale.lofi_epochs), "--head-epochs", str(scale.head_epochs), "--head-batch", "4",
            "--seed", str(seed), "--runs-dir", str(root / "runs"), "--name", run_name(setting, seed),
            *setting.options]
    return lofi_command(*args, *(["--resume"] if resume else ["--overwrite"]))


def run_name(setting: Setting, seed: int) -> str:
    return f"{setting.key}-seed{seed}"


def run(command: list[str], log: Path) -> tuple[float, float]:
    """Run a step, its output into `log`; returns its wall seconds and the CPU seconds
    (user + system) of its processes; raises on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with log.open("a") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    if code:
        raise click.ClickException(f"`{' '.join(command[2:5])} ...` failed with exit code {code}; see {log}")
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


# -- plans ------------------------------------------------------------------------------

def make_plans(root: Path, settings: list[Setting], videos: int) -> None:
    """One CPU plan per LoFi setting (the CPU grid of lofi/train/config.py restricted
    to that fidelity or cycle); kept, so a resumed benchmark plans nothing again."""
    from lofi.plan_workload import lofi_workload
    from lofi.train.config import CPU_GRID
    from planner.hardware.cpu_speed import with_measured_speed
    from lofi.models.lofi_model import plan_bn_name
    from lofi.train.config import PRETRAINED_BN_MODE
    from planner.planning import PlanRequest, make_plan
    from planner.plan_file import save_plan
    from planner.hardware.profiles import get_profile

    profile = None
    for setting in settings:
        path = root / "plans" / f"{setting.key}.json"
        if setting.fidelities is None or path.exists():
            continue
        profile = profile or with_measured_speed(get_profile("cpu"))
        single = len(setting.fidelities) == 1
        spec = replace(CPU_GRID, fidelities=setting.fidelities if single else (),
                       cycles=() if single else (setting.fidelities,),
                       batchnorm=plan_bn_name(PRETRAINED_BN_MODE))  # every run starts pre-trained
        request = PlanRequest(spec, profile, videos_per_epoch=videos, dataset="synthetic (paper_tables.py)")
        save_plan(make_plan(request, lofi_workload()), path)


# -- results ----------------------------------------------------------------------------

def finished(run_dir: Path) -> dict | None:
    """The summary of a finished run (metrics present, not interrupted), else None."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if summary.get("interrupted") or "metrics" not in summary or "wall_seconds" not in summary:
        return None
    return summary


def official_end_metrics(run_dir: Path) -> dict:
    """Average mAP, AR@100 and AUC of a finished run's head re-evaluated with the
    official end rule (no proposal ends after (T-1)/T); cached in official-end.json."""
    cached = run_dir / "official-end.json"
    if cached.exists():
        return json.loads(cached.read_text())
    import torch

    from lofi.data.annotations import load_annotations
    from lofi.models.heads import build_head
    from lofi.train.checkpoint import load_checkpoint
    from lofi.train.config import load_config
    from lofi.train.eval_stage import load_class_scores, predict, write_and_evaluate
    from lofi.train.features_stage import load_features

    config = load_config(run_dir / "config.json")
    annotations = load_annotations(config.data.annotations)
    records = [r for r in annotations.records if r.subset == config.data.eval_subset]
    features = load_features(run_dir / "features", [r.video_id for r in records])
    channels, temporal_dim = next(iter(features.values())).shape
    head = build_head(config.head, in_channels=channels, temporal_dim=temporal_dim)
    head.load_state_dict(load_checkpoint(run_dir / "head").state["model"])
    proposals = predict(head, config.head, features, records, device=torch.device("cpu"),
                        top_k=config.top_k_proposals, end_rule="official")
    outcome = write_and_evaluate(proposals, annotations=config.data.annotations, subset=config.data.eval_subset,
                                 class_names=annotations.classes,
                                 class_scores=load_class_scores(config.data.classification, annotations.classes),
                                 top_k_classes=config.top_k_classes, results_path=run_dir / "official-end" / "results.json",
                                 proposals_path=run_dir / "official-end" / "proposals.json")
    metrics = {"detection": outcome.detection, "proposals": outcome.proposals}
    atomic_write_json(cached, metrics)
    return metrics


def headline(metrics: dict) -> dict[str, float]:
    """Average mAP, AR@100, AUC in percent."""
    return {"mAP": 100 * metrics["detection"]["average_mAP"], "AR@100": 100 * metrics["proposals"]["AR@100"],
            "AUC": 100 * metrics["proposals"]["AUC"]}


def mean_std(values: list[float], *, signed: bool = False) -> str:
    """'mean ± sample std' with two decimals ('–' for none, the value for one)."""
    if not values:
        return "–"
    mean = f"{statistics.mean(values):+.2f}" if signed else f"{statistics.mean(values):.2f}"
    return mean if len(values) == 1 else f"{mean} ± {statistics.stdev(values):.2f}"


def table_rows(settings: list[Setting], summaries: dict[str, list[dict]], official: dict[str, list[dict]]) -> list[str]:
    """Markdown rows: one per setting, mean +- sample std over its finished seeds."""
    rows = []
    for setting in settings:
        runs = summaries.get(setting.key, [])
        scores = [headline(s["metrics"]) for s in runs]
        ends = [headline(m) for m in official.get(setting.key, [])]
        delta = [e["mAP"] - s["mAP"] for s, e in zip(scores, ends)]
        minutes = [s["wall_seconds"] / 60 for s in runs]
        cpu = [s["cpu_seconds"] / 60 for s in runs if "cpu_seconds" in s]
        planned = [s["stages"]["lofi"].get("planned_reserved_bytes") for s in runs if "lofi" in s["stages"]]
        memory = f"{planned[0] / 2**20:.0f} MiB" if planned and planned[0] else "–"
        rows.append(f"| {setting.label} | {len(runs)} | {mean_std([x['mAP'] for x in scores])} | "
                    f"{mean_std([x['AR@100'] for x in scores])} | {mean_std([x['AUC'] for x in scores])} | "
                    f"{mean_std([e['mAP'] for e in ends])} ({mean_std(delta, signed=True)}) | {mean_std(minutes)} | {mean_std(cpu)} | {memory} |")
    return rows


def render(settings, summaries, official, commands: list[str], scale_name: str, seeds, started: float,
           load: float) -> str:
    machine = (f"{platform.machine()}, {os.cpu_count()} CPU cores (load average {load:.1f} when it started), "
               f"Python {platform.python_version()}")
    try:
        import torch

        machine += f", torch {torch.__version__}"
    except ImportError:
        pass
    order = sorted(((statistics.mean([headline(s["metrics"])["mAP"] for s in runs]), key)
                    for key, runs in summaries.items() if runs), reverse=True)
    labels = {s.key: s.label for s in settings}
    cpu_total = sum(s.get("cpu_seconds", 0.0) for runs in summaries.values() for s in runs)
    lines = [
        "# The paper's comparisons at synthetic scale",
        "",
        f"Made by `python benchmarks/paper_tables.py --scale {scale_name}` on {machine}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {(time.time() - started) / 60:.0f} min in this "
        f"invocation. Seeds {', '.join(map(str, seeds))}. TSM-R18 encoder, G-TAD head, percent, mean ± sample "
        "std over the seeds. `official end`: the same heads evaluated with the official BMN/G-TAD rule that no "
        "proposal ends after (T−1)/T (`--proposal-end official`), and its change of average mAP. Time: wall "
        "minutes of each `lofi train` run (the shared pre-training not included) and its CPU minutes (user + "
        "system of its processes; on a loaded machine both grow: torch's OpenMP threads spin while they wait; "
        f"all runs: {cpu_total / 60:.0f} CPU min). Load average when this invocation ended: "
        f"{os.getloadavg()[0]:.1f}. Memory: the plan's reserved peak for the LoFi stage (on this CPU: estimated, "
        "not measured).",
        "",
        "| setting | runs | average mAP | AR@100 | AUC | official end: mAP (Δ) | wall min | CPU min | planned memory |",
        "|---|---|---|---|---|---|---|---|---|",
        *table_rows(settings, summaries, official),
        "",
        "Ordering by mean average mAP: " + " > ".join(labels[k] for _, k in order) + ".",
        "",
        "## Commands",
        "",
        "```bash",
        *commands,
        "```",
        "",
    ]
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------

@click.command()
@click.option("--scale", "scale_name", type=click.Choice(sorted(SCALES)), default="paper", show_default=True)
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds.")
@click.option("--root", type=click.Path(path_type=Path, file_okay=False),
              help="Working folder (default: runs/paper-tables-SCALE).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              help="Markdown to write (default: docs/paper-tables.md at paper scale, ROOT/paper-tables.md otherwise).")
@click.option("--only", multiple=True, help="Run only these settings (acp, s, t, st, c-long, c-short, full).")
def main(scale_name: str, seeds: str, root: Path | None, out: Path | None, only: tuple[str, ...]) -> None:
    started, load = time.time(), os.getloadavg()[0]
    scale = SCALES[scale_name]
    seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    root = (root or ROOT / "runs" / f"paper-tables-{scale_name}").resolve()
    out = out or (ROOT / "docs" / "paper-tables.md" if scale_name == "paper" else root / "paper-tables.md")
    settings = [s for s in paper_settings(scale.full) if not only or s.key in only]
    log = root / "log.txt"
    commands = []

    synth = lofi_command("data", "synth", "--out", str(root / "data"), *scale.synth)
    commands.append(shown(synth))
    if not (root / "data" / "manifest.json").exists():
        run(synth + ["--force"], log)
    pretrain = lofi_command("pretrain", *data_args(root, scale), "--epochs", str(scale.pretrain_epochs),
                            "--out", str(root / "pretrained" / "encoder.pt"))
    commands.append(shown(pretrain))
    run(pretrain, log)  # reuses complete weights
    from lofi.data.annotations import load_annotations

    training = len(load_annotations(root / "data" / "annotations.json", subsets=["training"]).records)
    make_plans(root, [s for s in paper_settings(scale.full) if s.key == "s" or s in settings], training)
    commands.append(f"# plans: {root / 'plans'}/KEY.json, made by make_plans() in this script")

    summaries: dict[str, list[dict]] = {}
    official: dict[str, list[dict]] = {}
    for seed in seed_list:
        for setting in settings:
            run_dir = root / "runs" / run_name(setting, seed)
            command = train_command(root, scale, setting, seed, resume=(run_dir / "config.json").exists())
            commands.append(shown(command).replace(" --resume", " --overwrite"))
            summary = finished(run_dir)
            if summary is None:
                seconds, cpu = run(command, log)
                document = json.loads((run_dir / "summary.json").read_text())
                document["wall_seconds"] = round(seconds + document.get("wall_seconds", 0.0), 1)
                document["cpu_seconds"] = round(cpu + document.get("cpu_seconds", 0.0), 1)
                atomic_write_json(run_dir / "summary.json", document)
                summary = finished(run_dir)
            summaries.setdefault(setting.key, []).append(summary)
            official.setdefault(setting.key, []).append(official_end_metrics(run_dir))
            atomic_write_text(out, render(settings, summaries, official, commands, scale_name, seed_list, started,
                                              load))
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
