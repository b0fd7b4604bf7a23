"""Figures with matplotlib, the optional `lofi[plots]` extra: a figure to draw on (one
clear error when matplotlib is missing) and an atomic save in the format the file's
suffix names."""

from __future__ import annotations

from pathlib import Path

from lofi.errors import OptionError
from planner.atomic_files import atomic_write

FORMATS = {".png": "png", ".svg": "svg"}  # suffix -> matplotlib format


def figure_format(path: str | Path, formats: dict[str, str] = FORMATS) -> str:
    """The format of `path` from its suffix; an OptionError naming the file otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in formats:
        choices = " or ".join(formats)
        raise OptionError(f"{path}: cannot draw a {suffix or 'suffix-less'} file; name it {choices}")
    return formats[suffix]


def check_plot(path: str | Path, what: str) -> str:
    """Before the work whose result `path` will draw: its format, or an OptionError when
    the suffix is not one we draw or matplotlib is missing."""
    fmt = figure_format(path)
    new_figure(what)
    return fmt


def new_figure(what: str, size: tuple[float, float] = (6.4, 4.8)):
    """A matplotlib Figure on the Agg canvas (no display needed); `what` says what it
    draws, for the message when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise OptionError(f"drawing {what} needs matplotlib, which is not installed: pip install 'lofi[plots]'") from None
    figure = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path: str | Path, fmt: str) -> Path:
    """Write `figure` to `path` atomically (folders are created) in `fmt`."""
    return atomic_write(Path(path), lambda handle: figure.savefig(handle, format=fmt))
