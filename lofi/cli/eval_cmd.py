"""`lofi eval`: ActivityNet detection mAP or proposal AR@AN / AUC of a results file."""

from __future__ import annotations

import json
from pathlib import Path

import click

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
    from lofi.cli.eval_render import render_detection, render_proposals
    from lofi.errors import OptionError
    from lofi.evaluation import (
        DEFAULT_TIOU_THRESHOLDS,
        evaluate_detection,
        evaluate_proposals,
        load_ground_truth,
        load_predictions,
    )
    from lofi.evaluation.inputs import parse_thresholds

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
