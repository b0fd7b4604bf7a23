"""One console for results (stdout) and one for errors and progress (stderr)."""

from pathlib import Path

from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)


def writable(path: Path, option: str) -> None:
    """An OptionError now if the file `path` given to `option` could not be written."""
    from lofi.errors import OptionError
    from planner.atomic_files import check_writable

    try:
        check_writable(path)
    except OSError as error:
        raise OptionError(f"{option} {path}: cannot write there ({error.strerror or error})") from None


# Planner fields whose option is not `--` + the field with dashes.
_OPTION_OF_FIELD = {"batches": "--batch", "precisions": "--precision"}


def option_of(field: str) -> str:
    """The `lofi plan` option that sets a planner field: 'global_batch' -> '--global-batch'."""
    return _OPTION_OF_FIELD.get(field, "--" + field.replace("_", "-"))


def option_setting(field: str, value: str | None) -> str:
    """How to set a planner field with `lofi plan`: ('precisions', 'fp16') -> '--precision fp16'."""
    if field == "accumulation":  # on unless --no-accumulation
        return "drop --no-accumulation" if value == "on" else "--no-accumulation"
    option = option_of(field)
    return option if value is None else f"{option} {value}"


def error_message(error: Exception) -> str:
    """The line a typed error prints as; planner errors name options, not fields."""
    from planner.errors import PlannerError

    return error.render(option_setting) if isinstance(error, PlannerError) else str(error)


def fail(message: str, exit_code: int = 2) -> None:
    """Print one red line on stderr and exit with `exit_code`."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise SystemExit(exit_code)
