"""Imported by the fork server of `--dask local` workers only (last in its preload list).

When the command exits, the server sees its client gone and shuts down like any interpreter:
atexit handlers and module teardown of Dask and torch, 0.5–1 s during which it still holds the
command's stdout and stderr open, so `altgrad analyze ... --dask local | jq` waits for it. The
server has nothing to flush or release, so it ends at once instead. Its forked workers never run
atexit handlers (multiprocessing ends them with os._exit), and no other process imports this.
"""

from __future__ import annotations

import atexit
import os
import sys


def _exit_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


atexit.register(_exit_now)  # registered last, so it runs first
