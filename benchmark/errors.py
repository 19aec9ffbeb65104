"""The one exception type a user sees: a message that names the problem and the fix."""

from __future__ import annotations


class BenchError(Exception):
    """A problem with the user's input or environment, reported without a traceback.

    `exit_code` follows the usual convention: 2 for a bad command line (unknown name, bad flag
    value), 1 for everything else (missing data, failed check).
    """

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(BenchError):
    """A bad name or flag value on the command line (exit code 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)


def unknown_name(kind: str, name: str, valid: list[str]) -> UsageError:
    """The error for a method or dataset name that does not exist, listing the valid ones."""
    return UsageError(
        f"unknown {kind} '{name}'. Valid {kind}s: {', '.join(sorted(valid))}. "
        f"`bench list` describes each."
    )
