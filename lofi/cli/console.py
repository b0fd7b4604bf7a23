"""One console for results (stdout) and one for errors and progress (stderr); the one
progress-bar factory, whose bars library code gets passed as callbacks or a StageProgress."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

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


def note(message: str) -> None:
    """A yellow note on stderr."""
    err_console.print(f"[yellow]note:[/] {escape(message)}", highlight=False)


def fail(message: str, exit_code: int = 2) -> None:
    """Print one red line on stderr and exit with `exit_code`."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise SystemExit(exit_code)


def progress_bar(*, transient: bool = True, fields: bool = False) -> Progress:
    """The house progress bar on stderr: description, bar, done/total, elapsed, remaining
    (and, with `fields`, the latest values a stage reports beside it)."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn()]
    if fields:
        columns.append(TextColumn("{task.fields[info]}"))
    return Progress(*columns, console=err_console, transient=transient)


@contextmanager
def counting(description: str) -> Iterator[Callable[[int, int], None]]:
    """A transient bar for library code that reports (done, total): yields that callback."""
    with progress_bar() as progress:
        task = progress.add_task(description, total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


class StageBars:
    """lofi.train.progress.StageProgress on the house bar: one bar per stage, the latest
    fields (loss, lr, clips/s, memory) beside it."""

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._task = None

    def start(self, description: str, total: int | None) -> None:
        self.stop()
        self._progress = progress_bar(transient=False, fields=True)
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, info="")

    def advance(self, steps: int = 1, **fields: Any) -> None:
        if self._progress is None:
            return
        info = "  ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                         for key, value in fields.items())
        self._progress.update(self._task, advance=steps, info=info)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
