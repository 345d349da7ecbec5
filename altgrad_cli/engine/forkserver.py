"""Start the fork server of `--dask local` workers first thing, while the client imports torch.

LocalCluster workers fork from a server process that has imported Dask, torch and altgrad once
(`distributed.local_cluster`). Started when the cluster starts, that server's imports (1.5–2 s
on a small machine) come after the client's own and the run waits for both; started as soon as
the command knows it will need it, the two import at the same time on different cores. The
server is Python's own (`multiprocessing.forkserver`): starting it does not wait for it, and the
cluster finds it running. Imports nothing heavy itself, so the CLI can call it before torch.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver

LOCAL = "local"
"""`--dask local`: a LocalCluster of worker processes on this machine."""
PRELOAD = ["distributed", "altgrad_cli.engine.distributed", "altgrad_cli.engine.forkserver_exit"]
"""What every worker needs imported: Dask's worker and our tasks (which import torch); and, for
the server itself, a prompt exit once the command is done (`forkserver_exit`)."""


def start_forkserver() -> bool:
    """Launch the fork server with PRELOAD, unless it runs already or this platform has none.
    True when a server is (being) started."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
    multiprocessing.forkserver.ensure_running()
    return True
