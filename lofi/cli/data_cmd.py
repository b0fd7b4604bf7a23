"""`lofi data ...`: dataset utilities (synthetic data, checks)."""

from __future__ import annotations

import click

from lofi.cli import LazyGroup

SUBCOMMANDS: dict[str, str] = {
    "synth": "lofi.cli.data_synth_cmd:synth",
    "check": "lofi.cli.data_check_cmd:check",
}


@click.group(cls=LazyGroup, lazy=SUBCOMMANDS)
def data() -> None:
    """Make and check datasets in the ActivityNet format."""
