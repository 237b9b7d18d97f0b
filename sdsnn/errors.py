"""Errors meant for people: one line that says what, where and how to fix it.

The CLI turns any :class:`UserError` into that line on stderr and exit code 2, with no
traceback. Anything else is a bug and keeps its traceback.
"""

__all__ = ["UserError", "ConfigError", "DatasetUnavailable"]


class UserError(Exception):
    """A problem with the user's input or environment; the message is shown as is."""


class ConfigError(UserError):
    """A bad experiment config or search-space file."""


class DatasetUnavailable(UserError):
    """A dataset's files are missing and cannot be downloaded."""
