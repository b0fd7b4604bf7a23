"""Render a run's summary.json in the terminal: metrics, stage times, memory."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

PAPER_THRESHOLDS = (0.5, 0.75, 0.95)  # mAP columns of PAPER.md's tables; all are in summary.json


def summary_tables(summary: dict[str, Any]) -> list[Table]:
    tables = []
    metrics = summary.get("metrics") or {}
    detection, proposals = metrics.get("detection"), metrics.get("proposals")
    if detection:
        table = Table(title=f"Detection mAP (%) on {detection['subset']}, {detection['videos']} videos")
        shown = [(t, v) for t, v in zip(detection["tiou_thresholds"], detection["mAP"])
                 if any(abs(t - p) < 1e-6 for p in PAPER_THRESHOLDS)]  # the columns papers report
        for threshold, _ in shown:
            table.add_column(f"{threshold:.2f}", justify="right")
        table.add_column("average", justify="right", style="bold")
        table.add_row(*[f"{100 * v:.2f}" for _, v in shown], f"{100 * detection['average_mAP']:.2f}")
        tables.append(table)
    if proposals:
        table = Table(title=f"Proposals on {proposals['subset']} (%)")
        keys = [k for k in ("AR@1", "AR@5", "AR@10", "AR@100", "AUC") if proposals.get(k) is not None]
        for key in keys:
            table.add_column(key, justify="right", style="bold" if key == "AUC" else None)
        table.add_row(*[f"{100 * proposals[k]:.2f}" for k in keys])
        tables.append(table)
    stages = summary.get("stages") or {}
    if stages:
        table = Table(title="Stages")
        for column in ("stage", "time", "details"):
            table.add_column(column)
        for name, values in stages.items():
            table.add_row(name, _seconds(values.get("seconds")), _details(name, values))
        tables.append(table)
    return tables


def render_summary(summary: dict[str, Any], console: Console) -> None:
    for table in summary_tables(summary):
        console.print(table)
    unscored = ((summary.get("metrics") or {}).get("detection") or {}).get("unscored_classes")
    if unscored:
        subset = summary["metrics"]["detection"]["subset"]
        console.print(f"[yellow]warning:[/] class(es) {', '.join(unscored)} have no ground truth in the '{subset}' "
                      "subset: their detections are not scored (as the official ActivityNet evaluation)",
                      highlight=False)
    data = summary.get("data") or {}
    if data.get("missing") or data.get("unreadable"):
        console.print(f"[yellow]{data['missing']} video(s) missing and {data['unreadable']} unreadable were "
                      "skipped[/] (listed in media_problems.txt)", highlight=False)
    console.print(f"run folder: [bold]{summary.get('run')}[/] (summary.json, results.json, metrics.jsonl)",
                  highlight=False)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 60:.1f} min" if value >= 60 else f"{value:.1f} s"


def _details(name: str, values: dict[str, Any]) -> str:
    if name == "pretrain":
        accuracy = values.get("train_accuracy")
        text = "cached weights reused" if values.get("reused") else f"{values.get('epochs')} epochs"
        text += f", train accuracy {accuracy:.0%}" if accuracy is not None else ""
        return f"{text}: {values.get('weights')}"
    if name == "lofi":
        text = f"{values.get('candidate')}; {values.get('steps')} steps, last loss {_num(values.get('last_loss'))}"
        if values.get("peak_reserved_bytes") is not None:
            planned = values.get("planned_reserved_bytes")
            text += f"; peak {values['peak_reserved_bytes'] / 2**30:.2f} GiB"
            text += f" (planned {planned / 2**30:.2f})" if planned else ""
        if values.get("fallbacks"):
            text += f"; {len(values['fallbacks'])} OOM fallback(s)"
        if values.get("skipped_videos"):
            text += f"; {values['skipped_videos']} corrupt video(s) skipped"
        return text
    if name == "features":
        return (f"{values.get('extracted')} extracted, {values.get('reused')} reused at {values.get('fidelity')}"
                + (f", {len(values['skipped'])} skipped" if values.get("skipped") else ""))
    if name == "head":
        return f"{values.get('epochs')} epochs on {values.get('videos')} videos, last loss {_num(values.get('last_loss'))}"
    if name == "eval":
        return f"{values.get('videos')} videos"
    return ""


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
