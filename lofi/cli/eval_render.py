"""`lofi eval`'s tables: detection mAP per tIoU threshold (and per class), proposal AR@AN
and AUC, each value beside a bar."""

from __future__ import annotations

from lofi.cli.console import console


def _bar(fraction: float):
    from rich.bar import Bar

    return Bar(size=1.0, begin=0.0, end=max(0.0, min(1.0, fraction)), width=30)


def render_detection(result, per_class: bool) -> None:
    from rich.table import Table

    table = Table(title=f"ActivityNet detection, subset {result.subset}", title_justify="left")
    table.add_column("tIoU", justify="right")
    table.add_column("mAP (%)", justify="right")
    table.add_column("")
    for threshold, value in zip(result.tiou_thresholds, result.mAP):
        table.add_row(f"{threshold:.2f}", f"{100 * value:.2f}", _bar(float(value)))
    table.add_section()
    table.add_row("[bold]average[/]", f"[bold]{100 * result.average_mAP:.2f}[/]",
                  _bar(result.average_mAP))
    console.print(table)
    console.print(f"{result.videos} videos, {result.ground_truth} ground-truth segments, "
                  f"{result.predictions} predictions, {len(result.classes)} classes",
                  highlight=False)
    empty = int((result.predictions_per_class == 0).sum())
    if empty:
        console.print(f"{empty} classes have no prediction (AP 0)", highlight=False)
    if per_class:
        first, last = result.tiou_thresholds[0], result.tiou_thresholds[-1]
        classes = Table(title="AP per class (%)", title_justify="left")
        for name in ("class", "GT", "predictions", f"AP@{first:.2f}", f"AP@{last:.2f}", "average"):
            classes.add_column(name, justify="left" if name == "class" else "right")
        for c in sorted(range(len(result.classes)), key=lambda c: result.classes[c]):
            ap = result.ap[:, c]
            classes.add_row(result.classes[c], str(result.ground_truth_per_class[c]),
                            str(result.predictions_per_class[c]), f"{100 * ap[0]:.2f}",
                            f"{100 * ap[-1]:.2f}", f"{100 * ap.mean():.2f}")
        console.print(classes)


def render_proposals(result) -> None:
    from rich.table import Table

    table = Table(title=f"ActivityNet proposals, subset {result.subset}", title_justify="left")
    table.add_column("metric")
    table.add_column("%", justify="right")
    table.add_column("")
    for k, value in result.ar_at.items():
        if value is not None:
            table.add_row(f"AR@{k}", f"{100 * value:.2f}", _bar(value))
    table.add_section()
    table.add_row("[bold]AUC[/]", f"[bold]{100 * result.auc:.2f}[/]", _bar(result.auc))
    console.print(table)
    console.print(f"{result.videos} annotated videos, {result.ground_truth} ground-truth "
                  f"segments, {result.proposals} proposals, AN up to "
                  f"{result.proposals_per_video[-1]:.4g} per video", highlight=False)
