"""Progress reporting for the stages: rich bars on the main rank, nothing elsewhere."""

from __future__ import annotations

from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class StageProgress(Protocol):
    def start(self, description: str, total: int | None) -> None: ...

    def advance(self, steps: int = 1, **fields: Any) -> None: ...

    def stop(self) -> None: ...


class NullProgress:
    """For ranks other than the main one, and for tests."""

    def start(self, description: str, total: int | None) -> None:
        pass

    def advance(self, steps: int = 1, **fields: Any) -> None:
        pass

    def stop(self) -> None:
        pass


class RichProgress:
    """One bar per stage with the latest fields (loss, lr, clips/s, memory) beside it."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._task = None

    def start(self, description: str, total: int | None) -> None:
        self.stop()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, info="")

    def advance(self, steps: int = 1, **fields: Any) -> None:
        if self._progress is None:
            return
        info = "  ".join(f"{key} {_format(value)}" for key, value in fields.items())
        self._progress.update(self._task, advance=steps, info=info)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
