"""Opening input files defensively: regular files only, bounded JSON, one clear error otherwise.

Every input (checkpoint, index, saved report, baseline) goes through `open_regular`, so a FIFO
never blocks the open, `/dev/zero` is never read until memory runs out and a folder is named as
such. JSON inputs are read through `load_json`: size-capped, depth-limited, big-integer safe and
strict (no NaN / Infinity literals, no duplicate keys), because every one of those ends, unbounded,
in a hang, a crash or a silently different value.
"""

from __future__ import annotations

import json
import os
import stat
from typing import IO, Any

from altgrad_cli.errors import InputError

MAX_JSON_BYTES = 256 * 1024 * 1024
"""A saved report of a very large model is tens of MiB; nothing legitimate comes near this."""
MAX_JSON_DEPTH = 64
"""Reports nest about five levels deep and indexes two; json's recursion fails near 1,000."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike[str], expected: str = "a regular file") -> IO[bytes]:
    """Open `path` (following symlinks) for binary reading, or raise InputError naming it.

    O_NONBLOCK keeps the open of a FIFO from waiting for a writer; the file type is checked on
    the open descriptor (fstat), so the file read is the file checked."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as error:
        raise InputError(path, "no such file") from error
    except PermissionError as error:
        raise InputError(path, "permission denied") from error
    except IsADirectoryError as error:
        raise InputError(path, f"is a directory, expected {expected}") from error
    except OSError as error:
        raise InputError(path, f"cannot open: {error.strerror or error}") from error
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = _kind(mode)
            raise InputError(path, f"is {kind}, expected {expected}")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)  # builtin: this hook runs once per JSON object
    if len(out) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise ValueError(f"key {duplicate!r} appears twice")
    return out


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether parsed JSON nests deeper than `limit`, walked without recursion."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        elif not isinstance(node, list):
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in node if isinstance(child, (dict, list)))
    return False


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:20]}{'...' if len(text) > 20 else ''} is out of range")
    return value


def parse_json(raw: bytes, max_depth: int | None = MAX_JSON_DEPTH) -> Any:
    """Strict JSON from bytes; ValueError (with a short reason) on anything else.

    `max_depth=None` skips the depth walk for callers that validate every level themselves."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"not UTF-8 ({error.reason} at byte {error.start})") from None
    try:
        value = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            object_pairs_hook=_no_duplicates,
        )
    except json.JSONDecodeError as error:
        raise ValueError(f"{error.msg} at line {error.lineno} column {error.colno}") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as error:  # NaN/Infinity, a duplicate key, an integer of > 4300 digits
        raise ValueError(str(error).split("; ")[0]) from None
    if max_depth is not None and _depth_exceeds(value, max_depth):
        raise ValueError(f"nested more than {max_depth} levels deep")
    return value


def read_capped(path: str | os.PathLike[str], limit: int, expected: str) -> bytes:
    """The whole content of a regular file no larger than `limit` bytes."""
    with open_regular(path, expected) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise InputError(
                path, f"{size} bytes is larger than the {limit}-byte limit for {expected}"
            )
        try:
            raw = handle.read(limit + 1)
        except OSError as error:
            raise InputError(path, f"cannot read: {error.strerror or error}") from error
    if len(raw) > limit:
        raise InputError(path, f"larger than the {limit}-byte limit for {expected}")
    return raw


def load_json(path: str | os.PathLike[str], what: str, *, limit: int | None = None) -> Any:
    """Read and strictly parse a JSON input file (`what`: "JSON report", "safetensors index"),
    or raise InputError naming the file."""
    raw = read_capped(path, MAX_JSON_BYTES if limit is None else limit, f"a {what}")
    try:
        return parse_json(raw)
    except ValueError as error:
        raise InputError(path, f"not a valid {what} ({error})") from None
