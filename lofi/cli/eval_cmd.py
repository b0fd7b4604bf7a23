"""`lofi eval`: ActivityNet detection mAP or proposal AR@AN / AUC of a results file."""

from __future__ import annotations

import json
from pathlib import Path

import click

MAX_THRESHOLDS = 1000  # a 'start:step:stop' range longer than this is a typo, not a request


@click.command("eval")
@click.option("--gt", "gt_path", required=True, type=click.Path(path_type=Path),
              help="Ground truth JSON (ActivityNet format).")
@click.option("--pred", "pred_path", required=True, type=click.Path(path_type=Path),
              help="Results JSON (ActivityNet format): detections, or proposals with --proposals.")
@click.option("--subset", default="validation", show_default=True, help="Subset of the ground truth.")
@click.option("--proposals", is_flag=True, help="Evaluate class-agnostic proposals (AR@AN, AUC).")
@click.option("--max-proposals", type=click.IntRange(min=1), default=None,
              help="Largest average number of proposals per video (AN).  [default: 100]")
@click.option("--tiou-thresholds", "thresholds", default=None, metavar="LIST",
              help="tIoU thresholds: 'a,b,c' or 'start:step:stop'.  [default: 0.5:0.05:0.95]")
@click.option("--ignore-unknown-labels", is_flag=True,
              help="Drop (and count) predictions whose label is not a ground-truth class.")
@click.option("--per-class", is_flag=True, help="Also show the AP of every class.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (fractions) instead.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the AR-AN curve to this PNG (needs lofi[plots]).")
def eval_command(gt_path, pred_path, subset, proposals, max_proposals, thresholds,
                 ignore_unknown_labels, per_class, as_json, plot) -> None:
    """Evaluate PRED against GT exactly as the official ActivityNet code does."""
    from lofi.errors import OptionError
    from lofi.evaluation import (
        DEFAULT_TIOU_THRESHOLDS,
        evaluate_detection,
        evaluate_proposals,
        load_ground_truth,
        load_predictions,
    )

    if not proposals:
        for flag, given in (("--max-proposals", max_proposals is not None), ("--plot", plot is not None)):
            if given:
                raise OptionError(f"{flag} applies to proposals; add --proposals")
    elif per_class:
        raise OptionError("--per-class applies to detection; proposals have no classes")
    tious = DEFAULT_TIOU_THRESHOLDS if thresholds is None else parse_thresholds(thresholds)
    gt = load_ground_truth(gt_path, subset)
    predictions = load_predictions(pred_path)
    if proposals:
        result = evaluate_proposals(gt, predictions, tiou_thresholds=tious,
                                    max_proposals=100 if max_proposals is None else max_proposals)
        if plot is not None:
            from lofi.evaluation.plot import plot_ar_an

            plot_ar_an(result, plot)
        payload = result.to_json()
    else:
        result = evaluate_detection(gt, predictions, tiou_thresholds=tious,
                                    ignore_unknown_labels=ignore_unknown_labels)
        payload = result.to_json(per_class=per_class)
    _warn(result, pred_path, plot)
    if as_json:
        click.echo(json.dumps(payload))
    elif proposals:
        render_proposals(result)
    else:
        render_detection(result, per_class)


def parse_thresholds(text: str) -> list[float]:
    """'0.3,0.5,0.7' or 'start:step:stop' (inclusive, as np.linspace(start, stop, n))."""
    import numpy as np

    from lofi.errors import OptionError

    try:
        if ":" in text:
            start, step, stop = (float(part) for part in text.split(":"))
            if not (np.isfinite([start, step, stop]).all() and step > 0):
                raise ValueError  # checked before dividing by the step
            count = round((stop - start) / step) + 1
            if not 1 <= count <= MAX_THRESHOLDS or abs(start + (count - 1) * step - stop) > 1e-9:
                raise ValueError
            return np.linspace(start, stop, count).tolist()
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise OptionError(
            f"--tiou-thresholds {text!r}: expected 'a,b,c' or 'start:step:stop' with a step > 0 "
            f"and stop reached by at most {MAX_THRESHOLDS} whole steps"
        ) from None


def _warn(result, pred_path: Path, plot: Path | None) -> None:
    from lofi.cli.console import err_console

    if result.ignored_outside_subset:
        err_console.print(
            f"[yellow]note:[/] ignored {result.ignored_outside_subset} predictions for videos "
            f"outside subset {result.subset!r} of the ground truth", highlight=False)
    if getattr(result, "ignored_unknown_labels", 0):
        err_console.print(
            f"[yellow]note:[/] ignored {result.ignored_unknown_labels} predictions whose label "
            "is not a ground-truth class", highlight=False)
    if plot is not None:
        err_console.print(f"wrote {plot}", highlight=False)


def _bar(fraction: float):
    from rich.bar import Bar

    return Bar(size=1.0, begin=0.0, end=max(0.0, min(1.0, fraction)), width=30)


def render_detection(result, per_class: bool) -> None:
    from rich.table import Table

    from lofi.cli.console import console

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

    from lofi.cli.console import console

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
