"""Regular expressions from the user (`--include`, `--exclude`, `--layer`), matched in linear time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from altgrad_cli.errors import UsageError


def compile_name_filter(pattern: str | None, option: str) -> Any:
    """A user's regex, compiled by RE2: matching time is linear in the name, whatever the pattern
    (Python's backtracking engine takes exponential time on `(a+)+$`). Backreferences and
    lookaround, which need backtracking, are usage errors."""
    if pattern is None:
        return None
    import re2

    options = re2.Options()
    options.log_errors = False  # RE2 would log the parse error to stderr itself
    try:
        return re2.compile(pattern, options)
    except re2.error as error:
        reason = error.args[0] if error.args else error
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise UsageError(
            f"{option} {pattern!r} is not a valid regular expression: {reason}"
        ) from None
    except (TypeError, ValueError) as error:  # a NUL or a lone surrogate in the pattern
        raise UsageError(
            f"{option} {pattern!r} is not a valid regular expression: {error}"
        ) from None


def any_of(patterns: str | Sequence[str] | None, option: str) -> str | None:
    """Several `--include` (or `--exclude`) patterns as one regex matching a name when any of
    them does; one pattern stays as given, so a report records exactly what the user wrote.
    Each is checked on its own first, so an error names the pattern at fault."""
    if patterns is None or isinstance(patterns, str):
        return patterns
    patterns = list(patterns)
    for pattern in patterns:
        compile_name_filter(pattern, option)
    if not patterns:
        return None
    if len(patterns) == 1:
        return patterns[0]
    return "|".join(f"(?:{pattern})" for pattern in patterns)
