"""Typed errors that a user can cause. Library code raises them; only the CLI turns
them into one red line and an exit code."""


class LofiError(Exception):
    """Base of every error caused by user input (files, options, data)."""

    exit_code = 2


class InputFileError(LofiError):
    """A file the user named is missing, unreadable or malformed; the message names it."""


class OptionError(LofiError):
    """An option or combination of options that cannot work."""


class VideoDecodeError(LofiError):
    """A video (or frame folder) that cannot be decoded; the message names the file."""


class CheckpointError(LofiError):
    """A checkpoint that is missing or cannot be loaded."""
