"""User text (tensor names, paths, rules) shown literally: control characters escaped, no markup.

Tensor and file names come from the checkpoint's author. Printed raw, an escape sequence
reaches the terminal, a newline splits a one-line error, and a character XML 1.0 cannot hold
makes the JUnit file unreadable; printed through rich, `[red]` or `[/]` becomes markup.
"""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, and the Unicode line/paragraph separators and bidi overrides, which
# reorder or split what a reader sees. Surrogates cannot be encoded and are escaped too.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """`text` on one line with every control character written as a \\xNN or \\uNNNN escape."""
    return _UNSAFE.sub(_escape, str(text))


def markdown_cell(text: object) -> str:
    """User text for a Markdown table cell: controls escaped, `|` cannot end the cell."""
    return printable(text).replace("|", "\\|")


def markdown_code(text: object) -> str:
    """User text as a Markdown code span in a table: a backtick fence longer than any backtick
    run inside, so a name holding backticks cannot close the span early."""
    text = markdown_cell(text)
    run = longest = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"
