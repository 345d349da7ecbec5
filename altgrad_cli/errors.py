"""The exceptions altgrad raises; the CLI turns each into one line and an exit code."""

from __future__ import annotations


class AltgradError(Exception):
    """Base of every error altgrad raises on purpose; `exit_code` is what the CLI exits with."""

    exit_code = 3


class UsageError(AltgradError, ValueError):
    """Raised for a bad option: an unknown format or scaling mode, a malformed rule, a bad regex."""

    exit_code = 2


class FormatError(UsageError):
    """Raised when a format name is unknown or describes an impossible format."""


class InputError(AltgradError):
    """Raised when an input file is missing, unreadable or corrupt, or there is nothing to compare."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class MissingExtraError(AltgradError):
    """Raised when a feature needs an optional extra that is not installed (`altgrad-cli[html]`)."""
