"""The `lofi` command: one thin click command per verb, loaded lazily so that
`lofi --help` does not import torch."""

from __future__ import annotations

import importlib

import click

from lofi import __version__
from lofi.cli.console import error_message, fail

# verb -> "module:attribute". Each module holds one thin click command.
COMMANDS: dict[str, str] = {
    "data": "lofi.cli.data_cmd:data",
    "eval": "lofi.cli.eval_cmd:eval_command",
    "gpus": "lofi.cli.gpus_cmd:gpus",
    "plan": "lofi.cli.plan_cmd:plan",
    "pretrain": "lofi.cli.pretrain_cmd:pretrain",
    "report": "lofi.cli.report_cmd:report",
    "train": "lofi.cli.train_cmd:train",
}


class LazyGroup(click.Group):
    """A click group whose commands are imported only when used: `lazy` maps each verb
    to "module:attribute"."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = COMMANDS if lazy is None else lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.lazy)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = self.lazy.get(name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        return getattr(importlib.import_module(module_name), attribute)


class _LofiGroup(LazyGroup):
    """The top-level group: turns typed errors into one red line and an exit code."""

    def invoke(self, ctx: click.Context):
        from lofi.errors import LofiError
        from planner.errors import PlannerError

        try:
            return super().invoke(ctx)
        except (LofiError, PlannerError) as error:
            fail(error_message(error), error.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except OSError as error:  # a file system refusing a write (read-only, full, no permission)
            where = f"{error.filename}: " if error.filename else ""
            fail(f"{where}{error.strerror or error}", 2)


@click.group(cls=_LofiGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lofi")
def main() -> None:
    """Plan and train LoFi end-to-end temporal action localization within a GPU budget."""
