"""Graceful stop on SIGINT/SIGTERM: the trainer finishes the step it is in, writes a
checkpoint and exits cleanly. A second signal of the same kind stops at once (a second
Ctrl-C); a different one is taken as the same request (under torchrun, a terminal's
SIGINT reaches the ranks, then torchrun's own SIGTERM follows it)."""

from __future__ import annotations

import signal
from types import FrameType


class StopRequest:
    """Installs the handlers while active (`with StopRequest() as stop:`); the training
    loop polls `stop.requested` after every step."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.signals = signals
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested and name == self.signal_name:  # the same signal again: give up
            raise KeyboardInterrupt
        if self.requested:
            return
        self.requested = True
        self.signal_name = name

    def request(self, reason: str = "requested") -> None:
        """Ask for a stop from code (tests, a step budget)."""
        self.requested = True
        self.signal_name = reason

    def __enter__(self) -> StopRequest:
        for signum in self.signals:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: signals stay with their owner
                pass
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()
