"""The one exception type for problems a user can fix (bad input, missing key, missing extra)."""

from __future__ import annotations


class UserError(Exception):
    """An error the app reports as `message` plus `fix`, without a traceback, exiting non-zero."""

    def __init__(self, message: str, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(message if fix is None else f"{message}\n  fix: {fix}")
