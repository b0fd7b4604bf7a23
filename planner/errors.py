"""Typed planner errors; the CLI maps them to messages and exit codes."""


class PlannerError(Exception):
    """Base of planner errors a user can cause (bad option, bad plan file)."""

    exit_code = 2


class PlanFileError(PlannerError):
    """A plan.json that is missing, not JSON, of another schema version or invalid."""


class ProfileError(PlannerError):
    """An unknown GPU name or a malformed profile file."""


class NothingFitsError(PlannerError):
    """No candidate fits the memory budget (exit code 3, as the planner issue asks)."""

    exit_code = 3
