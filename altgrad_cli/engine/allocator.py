"""Let freed chunk-sized buffers be reused instead of handed back to the kernel and faulted in again.

The analysis allocates and frees the same few chunk-sized temporaries (1–2 MiB each) thousands
of times. By default glibc serves blocks that large with mmap and unmaps them on free, so each
new temporary page-faults all of its memory in again: about a quarter of the run time. Raising
the mmap and trim thresholds keeps freed blocks in the heap for the next chunk. Memory stays
bounded by the chunk size; only the command-line entry point calls this, never the library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 << 20  # glibc's ceiling on 64-bit systems
_TRIM_THRESHOLD = 256 << 20


def keep_freed_buffers() -> bool:
    """True when glibc accepted both thresholds; a no-op (False) anywhere else."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )


def release_freed_memory() -> None:
    """Hand freed heap pages back to the kernel (glibc's malloc_trim), after a phase that freed
    large buffers the next phase will not reuse (a tensor's per-group amax arrays): with the
    thresholds above they would otherwise stay resident. A no-op off glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


_TRIM: list = []


def _malloc_trim():
    if not _TRIM:
        function = None
        if sys.platform.startswith("linux"):
            try:
                function = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
                function.argtypes = [ctypes.c_size_t]
            except (OSError, AttributeError):
                function = None
        _TRIM.append(function)
    return _TRIM[0]
