"""The trajectory pipeline: n+1 checkpoints in, one record per (tensor, recipe) out. It never prints.

Tensors stream one at a time (a memory-mapped view of each checkpoint's copy) and each tensor in
chunks, with a streaming state per element (engine/trajectory.py), so peak memory depends on the
chunk size, not on the number of checkpoints or their size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import nullcontext

from altgrad_cli.engine.parallel import ChunkPool, available_cores, one_torch_thread
from altgrad_cli.engine.tensor import DEFAULT_CHUNK
from altgrad_cli.engine.trajectory import Recipe, TrajectoryCounts, accumulate_trajectory
from altgrad_cli.errors import UsageError
from altgrad_cli.io.checkpoint import Checkpoint
from altgrad_cli.io.regex import any_of
from altgrad_cli.io.series import Track, align_tensors
from altgrad_cli.numerics.formats import Format
from altgrad_cli.numerics.recipes import get_recipe
from altgrad_cli.numerics.scaling import ScaleMode, parse_scaling
from altgrad_cli.pipeline import Progress, analyze
from altgrad_cli.report.records import FormatInfo
from altgrad_cli.report.serialize import from_json
from altgrad_cli.report.trajectory import (
    OscillatingTensor,
    StepReport,
    TrajectoryInputs,
    TrajectoryLayer,
    TrajectoryMetrics,
    TrajectoryOptions,
    TrajectoryReport,
    TrajectoryScale,
    TrajectorySummary,
)


def _recipes(formats: Sequence[str | Format], scaling: str | None) -> tuple[Recipe, ...]:
    """The recipes of `-f` (and `--scaling`), parsed as `analyze` parses them; duplicates run once.
    Recipes whose scales need a whole-tensor pass per chunk layout (2-D tiles, NVFP4) are not
    followed yet: refused, not approximated."""
    if not formats:
        raise UsageError("give at least one format (-f)")
    recipes: dict[str, Recipe] = {}
    for item in formats:
        recipe = get_recipe(item, scaling)
        if recipe.scaling.mode is ScaleMode.NVFP4 or recipe.scaling.rows > 1:
            raise UsageError(
                f"trajectory does not follow {recipe.name} yet (2-D tiles and NVFP4); "
                "use analyze on each pair of checkpoints"
            )
        recipes.setdefault(recipe.name, Recipe(recipe.name, recipe.format, recipe.scaling))
    return tuple(recipes.values())


def _metrics(counts: TrajectoryCounts) -> TrajectoryMetrics:
    return TrajectoryMetrics.from_counts(
        steps=counts.steps,
        numel=counts.numel,
        nonfinite=counts.nonfinite,
        flips_per_step=counts.flips_per_step,
        ever_flipped=counts.ever_flipped,
        net_flipped=counts.net_flipped,
        flip_backs=counts.flip_backs,
        grid_steps=counts.grid_steps,
        net_grid_steps=counts.net_grid_steps,
        frozen_run_total=counts.frozen_run_total,
    )


def trajectory(
    checkpoints: Sequence[str | os.PathLike[str]],
    *,
    formats: Sequence[str | Format] = ("e4m3fn",),
    scaling: str | None = None,
    fixed_scale: bool = False,
    strip_prefix: Sequence[str] = (),
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    per_step: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
    worst: int = 5,
    progress: Progress | None = None,
    threads: int | None = None,
    dask: str | None = None,
    dask_timeout: float = 10.0,
) -> TrajectoryReport:
    """Follow every element's code over checkpoints C0 … Cn (n+1 >= 3, in step order) under each
    format: flips per step, frozen and ever-flipped shares, flip-backs (oscillation), path
    efficiency and frozen runs. Each checkpoint is quantized under its own scale, or C0's with
    `fixed_scale`. `per_step` adds the `analyze` report of every consecutive pair (under the later
    checkpoint's own scale for AFTER, i.e. `rescale`, unless `fixed_scale`).

    Chunks run on `threads` cores (default: every core this process may use); the numbers do
    not depend on it, nor on `chunk_size`. With `dask` (a scheduler address, or "local" for a
    LocalCluster of `threads` worker processes) every tensor is a Dask task: the same report."""
    paths = [str(p) for p in checkpoints]
    include, exclude = any_of(include, "--include"), any_of(exclude, "--exclude")
    if len(paths) < 3:
        raise UsageError(f"a trajectory needs at least 3 checkpoints, got {len(paths)}")
    recipes = _recipes(formats, scaling)
    if chunk_size < 1:
        raise UsageError(f"--chunk-size must be at least 1, got {chunk_size}")
    if dask not in (None, "local") and threads is not None:
        raise UsageError(
            "--threads sets the worker count of --dask local; a cluster's workers have their own "
            "(dask worker --nworkers)"
        )
    threads = available_cores() if threads is None else threads
    if threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    ckpts = [Checkpoint(p) for p in paths]
    tracks, skipped = align_tensors(
        ckpts, strip_prefixes=tuple(strip_prefix), include=include, exclude=exclude
    )
    steps = len(paths) - 1
    layers: list[TrajectoryLayer] = []
    totals = {r.name: TrajectoryCounts(steps) for r in recipes}
    if dask is None:
        results = _in_process(ckpts, tracks, recipes, fixed_scale, chunk_size, threads, progress)
    else:
        from altgrad_cli.engine.distributed import trajectory_on_dask

        results = trajectory_on_dask(
            [(track.name, track.infos) for track in tracks],
            recipes,
            fixed_scale=fixed_scale,
            chunk=chunk_size,
            address=dask,
            workers=threads,
            timeout=dask_timeout,
            progress=progress,
        )
    for track, (counts, scales) in zip(tracks, results, strict=True):
        first = track.infos[0]
        for recipe in recipes:
            totals[recipe.name].merge(counts[recipe.name])
            layers.append(
                TrajectoryLayer(
                    name=track.name,
                    format=recipe.name,
                    dtype=first.dtype,
                    shape=first.shape,
                    scale=TrajectoryScale(
                        scales[recipe.name]["mode"],
                        None
                        if scales[recipe.name]["values"] is None
                        else tuple(scales[recipe.name]["values"]),
                    ),
                    metrics=_metrics(counts[recipe.name]),
                )
            )
    summary = []
    for recipe in recipes:
        own = sorted(
            (r for r in layers if r.format == recipe.name),
            key=lambda r: (-r.metrics.oscillation_rate, -r.metrics.flip_backs, r.name),
        )
        summary.append(
            TrajectorySummary(
                format=recipe.name,
                tensors=len(tracks),
                metrics=_metrics(totals[recipe.name]),
                worst=tuple(
                    OscillatingTensor(
                        r.name,
                        r.metrics.oscillation_rate,
                        r.metrics.flip_backs,
                        r.metrics.ever_flipped_frac,
                        r.metrics.path_efficiency,
                    )
                    for r in own[:worst]
                ),
            )
        )
    steps_reports = None
    if per_step:
        steps_reports = tuple(
            StepReport.from_report(
                t,
                analyze(
                    paths[t - 1],
                    paths[t],
                    formats=[r.name for r in recipes],
                    rescale=not fixed_scale,
                    strip_prefix=strip_prefix,
                    include=include,
                    exclude=exclude,
                    chunk_size=chunk_size,
                    threads=threads if dask in (None, "local") else None,
                    dask=dask,
                    dask_timeout=dask_timeout,
                ),
            )
            for t in range(1, len(paths))
        )
    return TrajectoryReport(
        inputs=TrajectoryInputs(tuple(paths)),
        options=TrajectoryOptions(
            formats=tuple(r.name for r in recipes),
            scaling=None if scaling is None else str(parse_scaling(scaling)),
            fixed_scale=fixed_scale,
            strip_prefix=tuple(strip_prefix),
            include=include,
            exclude=exclude,
            chunk_size=chunk_size,
            per_step=per_step,
        ),
        formats=tuple(from_json(FormatInfo, r.format.to_dict()) for r in recipes),
        layers=tuple(layers),
        summary=tuple(summary),
        skipped=tuple(skipped),
        per_step=steps_reports,
    )


def _in_process(
    ckpts: Sequence[Checkpoint],
    tracks: Sequence[Track],
    recipes: tuple[Recipe, ...],
    fixed_scale: bool,
    chunk_size: int,
    threads: int,
    progress: Progress | None,
) -> Iterator[tuple[dict[str, TrajectoryCounts], dict[str, dict]]]:
    """(counts, scale summary) of each track in order, chunks on this process's threads."""
    with (
        one_torch_thread(),  # before the pool starts, so its threads begin with one torch thread
        ChunkPool(threads) if threads > 1 else nullcontext() as pool,
    ):
        for done, track in enumerate(tracks, start=1):
            tensors = [c.tensor(info.name) for c, info in zip(ckpts, track.infos, strict=True)]
            result = accumulate_trajectory(
                tensors, recipes, fixed_scale=fixed_scale, chunk=chunk_size, pool=pool
            )
            del tensors
            if progress is not None:
                progress(done, len(tracks), track.name)
            yield result
