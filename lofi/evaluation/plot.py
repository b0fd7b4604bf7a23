"""The AR-AN curve as a PNG (matplotlib, the optional `lofi[plots]` extra)."""

from __future__ import annotations

from pathlib import Path

from lofi.evaluation.proposal import ProposalResult
from lofi.figure import new_figure, save_figure


def plot_ar_an(result: ProposalResult, path: str | Path) -> Path:
    """Draw average recall (and recall at each tIoU threshold) against the average number
    of proposals per video; write it atomically to `path` (folders are created)."""
    figure = new_figure("the AR-AN curve")
    axes = figure.add_subplot()
    an = result.proposals_per_video  # (100,)
    for t, threshold in enumerate(result.tiou_thresholds):
        axes.plot(an, result.recall[t], linewidth=0.8, alpha=0.45, label=f"tIoU {threshold:.2f}")
    axes.plot(an, result.avg_recall, color="black", linewidth=2.2, label="average")
    axes.set_xlabel("average number of proposals per video (AN)")
    axes.set_ylabel("recall")
    axes.set_ylim(0.0, 1.0)
    axes.set_xlim(0.0, float(an[-1]))
    axes.grid(alpha=0.3)
    axes.set_title(f"AR-AN, subset {result.subset}: AUC {100 * result.auc:.2f} %")
    axes.legend(fontsize=7, ncol=2, loc="lower right")
    return save_figure(figure, path, "png")
