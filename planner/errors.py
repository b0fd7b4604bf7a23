"""Typed planner errors; the CLI maps them to messages and exit codes."""

from __future__ import annotations

from collections.abc import Callable


class PlannerError(Exception):
    """Base of planner errors a user can cause (bad option, bad plan file)."""

    exit_code = 2


class FieldError(PlannerError):
    """A bad value of a named field (a `GridSpec` field, a function's parameter). The
    message names the field as the planner's API does ('precisions: unknown precision
    ...'); a front end names it its own way with `render` (the CLI: its option)."""

    def __init__(self, fields: str | tuple[str, ...], detail: str, *, value: str | None = None,
                 separator: str = ": ") -> None:
        self.fields = (fields,) if isinstance(fields, str) else tuple(fields)
        self.detail = detail
        self.value = value  # the offending value, when the message puts it after the name
        self.separator = separator  # between the name and the detail
        super().__init__(self.render(str))

    def render(self, name: Callable[[str], str]) -> str:
        """The message with each field called `name(field)`."""
        head = "/".join(name(field) for field in self.fields)
        if self.value is not None:
            head = f"{head} {self.value}"
        return f"{head}{self.separator}{self.detail}"


class PlanFileError(PlannerError):
    """A plan.json that is missing, not JSON, of another schema version or invalid."""


class ProfileError(PlannerError):
    """An unknown GPU name or a malformed profile file."""


class NothingFitsError(PlannerError):
    """No candidate fits the memory budget (exit code 3, as the planner issue asks)."""

    exit_code = 3
