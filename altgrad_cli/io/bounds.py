"""Bounds on option values: sizes no sane run needs are usage errors, not an exhausted machine.

Memory is bounded by the chunk; an unbounded chunk or thread count would undo that bound.
"""

from __future__ import annotations

import math

from altgrad_cli.errors import UsageError

MAX_CHUNK = 1 << 22
"""4M elements a chunk (the default is 256K); a chunk's working set is tens of bytes an element."""
MAX_THREADS = 1024


def check_run_options(*, chunk_size: int, threads: int | None, grad_eps: float) -> None:
    """Raise UsageError for a chunk size, thread count or gradient threshold out of range."""
    if not 1 <= chunk_size <= MAX_CHUNK:
        raise UsageError(f"--chunk-size must be between 1 and {MAX_CHUNK}, got {chunk_size}")
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise UsageError(f"--threads must be between 1 and {MAX_THREADS}, got {threads}")
    if not (isinstance(grad_eps, (int, float)) and math.isfinite(grad_eps) and grad_eps >= 0):
        raise UsageError(f"--grad-eps must be a finite number >= 0, got {grad_eps!r}")
