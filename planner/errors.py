"""Typed planner errors; the CLI maps them to messages and exit codes."""

from __future__ import annotations

from collections.abc import Callable


# How a front end says "set `field` to `value`" (value None: the field alone); the
# planner's own way is `field_setting`.
Setting = Callable[[str, "str | None"], str]


def field_setting(field: str, value: str | None) -> str:
    """'precisions', 'fp16' -> 'precisions fp16': a setting as the planner's API names it."""
    return field if value is None else f"{field} {value}"


class PlannerError(Exception):
    """Base of planner errors a user can cause (bad option, bad plan file)."""

    exit_code = 2

    def render(self, setting: Setting) -> str:
        """The message with every field setting written by `setting` (the CLI: its options)."""
        return str(self)


class FieldError(PlannerError):
    """A bad value of a named field (a `GridSpec` field, a function's parameter). The
    message names the field as the planner's API does ('precisions: unknown precision
    ...'); a front end names it its own way with `render` (the CLI: its option).
    `suggest` (field, value): the setting that would work, said after the detail
    ('...: that needs batches 4'; the CLI: '--batch 4')."""

    def __init__(self, fields: str | tuple[str, ...], detail: str, *, value: str | None = None,
                 separator: str = ": ", suggest: tuple[str, str | None] | None = None) -> None:
        self.fields = (fields,) if isinstance(fields, str) else tuple(fields)
        self.detail = detail
        self.value = value  # the offending value, when the message puts it after the name
        self.separator = separator  # between the name and the detail
        self.suggest = suggest
        super().__init__(self.render(field_setting))

    def render(self, setting: Setting) -> str:
        if len(self.fields) == 1:
            head = setting(self.fields[0], self.value)
        else:
            head = "/".join(setting(field, None) for field in self.fields)
        tail = f": that needs {setting(*self.suggest)}" if self.suggest is not None else ""
        return f"{head}{self.separator}{self.detail}{tail}"


class PlanFileError(PlannerError):
    """A plan.json that is missing, not JSON, of another schema version or invalid."""


class ProfileError(PlannerError):
    """An unknown GPU name or a malformed profile file."""


class NothingFitsError(PlannerError):
    """No candidate fits the memory budget (exit code 3, as the planner issue asks)."""

    exit_code = 3
