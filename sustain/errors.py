"""Errors a user can act on. The CLI turns each into a message and an exit code.

Exit codes (SPEC §8): 0 success, 1 a failed run or check, 2 bad usage,
config or input. No raw traceback reaches the user for these.
"""

from __future__ import annotations


class SustainError(Exception):
    """An error with a message meant for the user and the exit code to use."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  → {self.hint}"


class UsageError(SustainError):
    """Bad usage, input or data: exit code 2."""

    exit_code = 2


class ConfigError(UsageError):
    """A config value is wrong. Names the dotted key."""

    def __init__(self, key: str, problem: str, hint: str | None = None) -> None:
        self.key = key
        super().__init__(f"Config error at '{key}': {problem}", hint)


class RunFailed(SustainError):
    """A run or check that started but failed: exit code 1."""

    exit_code = 1
