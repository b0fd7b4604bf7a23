"""Progress reporting for the stages: what a stage calls (StageProgress), and the progress
that shows nothing (other ranks, tests). The CLI passes its rich bars in
(lofi.cli.console.StageBars); library code never builds one."""

from __future__ import annotations

from typing import Any, Protocol


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
