"""A file truncated while it is memory-mapped: exit 3 naming it, instead of dying by SIGBUS.

Sizes are checked before each tensor is mapped (`checkpoint.SafetensorsFile.tensor`), but a file
can still shrink in the middle of a tensor; the next read of a page past the new end raises
SIGBUS, which Python cannot handle (its handler returns and the faulting read repeats forever).
`install` puts a native handler in place that writes one line naming the mapped file that
shrank and exits with code 3. Only the CLI installs it; a library caller keeps its own handlers.
"""

from __future__ import annotations

import ctypes
import os
import signal

_MAPPED: dict[str, int] = {}  # path -> bytes the mapping needs
_HANDLER_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_int)
_installed: list[object] = []  # keeps the ctypes callback alive


def register(path: str, size: int) -> None:
    """Note that `path` is mapped and needs `size` bytes (called by the checkpoint reader)."""
    _MAPPED[path] = max(size, _MAPPED.get(path, 0))


def _culprit() -> str:
    for path, size in list(_MAPPED.items()):
        try:
            if os.stat(path).st_size < size:
                return path
        except OSError:
            return path
    return next(iter(_MAPPED), "a checkpoint file")


def _on_sigbus(signum: int) -> None:  # pragma: no cover - runs in a child process in tests
    from altgrad_cli.report.render.safe_text import printable

    line = f"error: {printable(_culprit())}: truncated or replaced while it was being read\n"
    os.write(2, line.encode("utf-8", "replace"))
    os._exit(3)


def install() -> bool:
    """Install the handler (once); False where the platform has no SIGBUS or no libc."""
    if _installed or not hasattr(signal, "SIGBUS"):
        return bool(_installed)
    try:
        libc = ctypes.CDLL(None)
        handler = _HANDLER_TYPE(_on_sigbus)
        libc.signal.restype = ctypes.c_void_p
        libc.signal.argtypes = [ctypes.c_int, _HANDLER_TYPE]
        libc.signal(signal.SIGBUS, handler)
    except (OSError, AttributeError):
        return False
    _installed.append(handler)
    return True
