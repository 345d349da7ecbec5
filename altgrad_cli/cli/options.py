"""Options that `analyze` and `trajectory` share, declared once: same names, same help."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DEFAULT_CHUNK = 1 << 18  # engine.tensor.DEFAULT_CHUNK, spelt here so --help needs no torch

StripPrefixOption = Annotated[
    list[str], typer.Option("--strip-prefix", help="Prefix removed from names (repeatable).")
]
IncludeOption = Annotated[
    list[str],
    typer.Option(
        metavar="REGEX",
        help="Only tensors whose name matches this regex (repeatable: any of them).",
    ),
]
ExcludeOption = Annotated[
    list[str],
    typer.Option(
        metavar="REGEX",
        help="Leave out tensors whose name matches this regex (repeatable: any of them).",
    ),
]
OutOption = Annotated[
    Path | None,
    typer.Option("--out", help="Write the report here (atomically) instead of stdout."),
]
TopOption = Annotated[
    int | None, typer.Option(help="Keep only the first N tensor records (after --sort).")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
ChunkSizeOption = Annotated[
    int, typer.Option("--chunk-size", help="Elements per chunk (memory bound).")
]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        "--threads", "-j", help="Cores to use (default: all available). Same numbers for any."
    ),
]

DaskOption = Annotated[
    str | None,
    typer.Option(
        "--dask",
        metavar="ADDRESS",
        help="Run on a Dask cluster (tcp://host:8786), or 'local' for a LocalCluster of "
        "--threads processes. Same numbers. Needs altgrad-cli[dask].",
    ),
]
DaskTimeoutOption = Annotated[
    float, typer.Option("--dask-timeout", help="Seconds to wait for the Dask scheduler.")
]
