"""`lofi data check`: match an annotation file to a media folder and say what is
missing, unreadable or of the wrong length, before any training starts."""

from __future__ import annotations

from pathlib import Path

import click

from lofi.cli.console import console, counting, writable

SUBSET_CHOICES = ("training", "validation", "testing")


@click.command()
@click.option("--annotations", "-a", "annotations_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Annotation JSON in the ActivityNet format (ActivityNet, HACS, THUMOS14).")
@click.option("--videos", "-v", "videos", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder of videos (v_<id>.mp4, <id>.mkv, ...) or, with --frames, of frame folders.")
@click.option("--frames", is_flag=True, help="Look for <id>/img_00001.jpg frame folders.")
@click.option("--subset", "subsets", multiple=True, type=click.Choice(SUBSET_CHOICES),
              help="Check only this subset (repeatable). Default: all.")
@click.option("--listing", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the list of problem videos [default: data_check.tsv here, "
                   "written only when there are problems].")
@click.option("--deep", is_flag=True,
              help="Read every packet to catch truncated files (reads each file in full).")
@click.option("--workers", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Videos probed in parallel.")
@click.option("--strict", is_flag=True, help="Exit with status 1 if any video is missing or unreadable.")
def check(annotations_path: Path, videos: Path, frames: bool, subsets: tuple[str, ...],
          listing: Path | None, deep: bool, workers: int, strict: bool) -> None:
    """Check that every annotated video has readable media of the annotated length."""
    from lofi.data.annotations import load_annotations
    from lofi.data.media import check_media, write_listing

    if listing is not None:
        writable(listing, "--listing")  # before probing every video, not after
    annotations = load_annotations(annotations_path, subsets=subsets or None)
    with counting("probing media") as advance:
        report = check_media(annotations.records, videos, frames=frames, deep=deep, workers=workers,
                             progress=advance)

    _render(annotations, report)
    problems = bool(report.missing or report.unreadable or report.mismatches)
    if problems or listing is not None:
        written = write_listing(report, listing or Path("data_check.tsv"))
        console.print(f"listing of problem videos: [bold]{written}[/]", highlight=False)
    if strict and (report.missing or report.unreadable):
        raise SystemExit(1)


def _render(annotations, report) -> None:
    from rich.table import Table

    table = Table(title=f"{annotations.path} vs {report.root}", title_justify="left")
    table.add_column("check")
    table.add_column("videos", justify="right")
    table.add_column("note")
    table.add_row("annotated", str(report.total),
                  f"{len(annotations.classes)} classes; segments clipped {annotations.clipped}, "
                  f"dropped {annotations.dropped}")
    table.add_row("found, readable", str(len(report.found)), "")
    table.add_row("missing", _count(len(report.missing)), _examples(report.missing))
    table.add_row("unreadable", _count(len(report.unreadable)),
                  _examples([item.video_id for item in report.unreadable]))
    worst = max(report.mismatches, key=lambda m: abs(m.measured - m.annotated), default=None)
    table.add_row("duration differs", _count(len(report.mismatches)),
                  "" if worst is None else f"largest: {worst.video_id} annotated "
                  f"{worst.annotated:.1f}s, media {worst.measured:.1f}s")
    console.print(table)


def _count(value: int) -> str:
    return f"[yellow]{value}[/]" if value else "0"


def _examples(ids, limit: int = 3) -> str:
    ids = list(ids)
    more = f", … (+{len(ids) - limit})" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more
