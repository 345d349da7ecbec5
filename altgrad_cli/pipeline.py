"""The pipeline: checkpoints in, one result per tensor out, a Report at the end. It never prints.

Tensors stream one at a time from memory-mapped files and big tensors in chunks, so peak
memory stays bounded by the chunk size, not by the checkpoint or the tensor.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace

from torch import Tensor

from altgrad_cli.engine.parallel import ChunkPool, available_cores, one_torch_thread
from altgrad_cli.engine.tensor import (
    DEFAULT_CHUNK,
    DEFAULT_GRAD_EPS,
    TensorAccumulator,
    accumulate_tensor,
)
from altgrad_cli.errors import UsageError
from altgrad_cli.io.bounds import check_run_options
from altgrad_cli.io.checkpoint import Checkpoint
from altgrad_cli.io.memory import open_checkpoint
from altgrad_cli.io.pairing import Pair, pair_tensors
from altgrad_cli.io.regex import any_of
from altgrad_cli.numerics.formats import Format
from altgrad_cli.numerics.recipes import Recipe, parse_recipes
from altgrad_cli.numerics.scaling import parse_scaling
from altgrad_cli.report.records import (
    FormatInfo,
    Inputs,
    LayerRecord,
    Report,
    ReportOptions,
    ScaleRecord,
    SummaryRecord,
    WorstRow,
)
from altgrad_cli.report.serialize import from_json

Progress = Callable[[int, int, str], None]
"""progress(done, total, name): called as each tensor starts (`name` is the one being analysed,
`done` counts those finished) and once at the end with done == total; the CLI draws a bar."""


@dataclass(frozen=True)
class TensorResult:
    pair: Pair
    accumulator: TensorAccumulator
    scales: dict[str, ScaleRecord]

    def records(self) -> list[LayerRecord]:
        results = self.accumulator.results()
        return [
            LayerRecord(
                name=self.pair.name,
                format=name,
                dtype=self.pair.before.dtype,
                shape=self.pair.before.shape,
                scale=self.scales[name],
                metrics=metrics,
            )
            for name, metrics in results.items()
        ]


def iter_tensor_results(
    pairs: Sequence[Pair],
    checkpoints: tuple[Checkpoint, Checkpoint, Checkpoint | None],
    formats: Sequence[Recipe],
    scaling: str | None,
    *,
    rescale: bool,
    grad_eps: float,
    chunk: int,
    progress: Progress | None = None,
    pool: ChunkPool | None = None,
) -> Iterator[TensorResult]:
    before, after, grads = checkpoints
    for done, pair in enumerate(pairs):
        if progress is not None:
            progress(done, len(pairs), pair.name)
        grad = grads.tensor(pair.grad.name) if pair.grad is not None and grads is not None else None
        acc, scales = accumulate_tensor(
            before.tensor(pair.before.name),
            after.tensor(pair.after.name),
            grad,
            formats,
            scaling,
            rescale=rescale,
            grad_eps=grad_eps,
            chunk=chunk,
            pool=pool,
        )
        yield TensorResult(pair, acc, scales)
    if progress is not None:
        progress(len(pairs), len(pairs), "done")


Source = str | os.PathLike[str] | Mapping[str, Tensor]
"""A checkpoint path (file, sharded folder or index) or a state dict of name → tensor."""


def iter_dask_results(
    pairs: Sequence[Pair],
    recipes: Sequence[Recipe],
    *,
    rescale: bool,
    grad_eps: float,
    chunk: int,
    address: str,
    workers: int,
    timeout: float,
    progress: Progress | None = None,
) -> Iterator[TensorResult]:
    """`iter_tensor_results` on a Dask cluster (engine/distributed.py): the same results, in the
    same order, to the bit."""
    from altgrad_cli.engine.distributed import Job, run_on_dask

    job = Job(tuple(recipes), rescale, grad_eps, chunk)
    results = run_on_dask(
        pairs, job, address=address, workers=workers, timeout=timeout, progress=progress
    )
    for pair, (acc, scales) in zip(pairs, results, strict=True):
        yield TensorResult(pair, acc, scales)


def update_source(grads_given: bool, with_grads: int, tensors: int) -> str:
    """The summary's update source: "grads" when every tensor had a gradient, "delta" when none
    did, "mixed" when some tensors fell back to AFTER - BEFORE (each record says which)."""
    if not grads_given or with_grads == 0:
        return "delta"
    return "grads" if with_grads == tensors else "mixed"


def tensors_without_gradient(report: Report) -> tuple[int, int]:
    """(tensors whose updates came from deltas although --grads was given, tensors analysed)."""
    sources = {layer.name: layer.metrics.update_source for layer in report.layers}
    if report.inputs.grads is None:
        return 0, len(sources)
    return sum(s != "grads" for s in sources.values()), len(sources)


@dataclass(frozen=True)
class AnalysisOptions:
    """What to analyse and how: every choice that decides the numbers, gathered once.

    The CLI builds one from its arguments and `analyze()` from its keywords; everything below
    reads this one object, so an option is spelt out in one place on its way down.
    Validation stays where the values are used (`run_analysis`), so errors read as before.
    """

    before: Source
    after: Source
    grads: Source | None = None
    formats: tuple[str | Format | Recipe, ...] = ("e4m3fn",)
    scaling: str | None = None  # for bare formats; None: each format's default
    rescale: bool = False
    grad_eps: float = DEFAULT_GRAD_EPS
    strip_prefix: tuple[str, ...] = ()
    include: str | Sequence[str] | None = None  # several: a name matching any of them
    exclude: str | Sequence[str] | None = None
    chunk_size: int = DEFAULT_CHUNK
    threads: int | None = None
    dask: str | None = None
    dask_timeout: float = 10.0

    def __post_init__(self) -> None:
        # Callers (Typer among them) may hand over lists: keep tuples, so the options stay frozen.
        object.__setattr__(self, "formats", tuple(self.formats))
        object.__setattr__(self, "strip_prefix", tuple(self.strip_prefix))
        object.__setattr__(self, "include", any_of(self.include, "--include"))
        object.__setattr__(self, "exclude", any_of(self.exclude, "--exclude"))


def analyze(
    before: Source,
    after: Source,
    *,
    grads: Source | None = None,
    formats: str | Format | Recipe | Sequence[str | Format | Recipe] = ("e4m3fn",),
    scaling: str | None = None,
    rescale: bool = False,
    grad_eps: float = DEFAULT_GRAD_EPS,
    strip_prefix: Sequence[str] = (),
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    worst: int = 5,
    progress: Progress | None = None,
    threads: int | None = None,
    dask: str | None = None,
    dask_timeout: float = 10.0,
) -> Report:
    """Analyse one optimizer step: BEFORE and AFTER checkpoints, optional gradients, one or more
    formats or recipes (`mxfp8`, `e4m3fn@block:32:rceil`). `scaling` applies to bare formats;
    without it each format uses its default (`none` for bf16 and fp16, else `tensor`).

    Chunks run on `threads` cores (default: every core this process may use); the numbers do
    not depend on it. BEFORE, AFTER and grads may be state dicts from a training loop. With
    `dask` (a scheduler address, or "local" for a LocalCluster of `threads` worker processes)
    tensors and chunk ranges run as Dask tasks: the same report, to the bit."""
    options = AnalysisOptions(
        before,
        after,
        grads=grads,
        formats=(formats,) if isinstance(formats, (str, Format, Recipe)) else tuple(formats),
        scaling=scaling,
        rescale=rescale,
        grad_eps=grad_eps,
        strip_prefix=tuple(strip_prefix),
        include=include,
        exclude=exclude,
        chunk_size=chunk_size,
        threads=threads,
        dask=dask,
        dask_timeout=dask_timeout,
    )
    return run_analysis(options, worst=worst, progress=progress)


def run_analysis(
    options: AnalysisOptions, *, worst: int = 5, progress: Progress | None = None
) -> Report:
    """`analyze()` on an options object (the CLI's way in): the `worst` tensors per format go
    into the summary; `progress` is called as each tensor starts."""
    scaling_text = None if options.scaling is None else str(parse_scaling(options.scaling))
    fmts = tuple(parse_recipes(list(options.formats), scaling_text))
    check_run_options(
        chunk_size=options.chunk_size, threads=options.threads, grad_eps=options.grad_eps
    )
    dask = options.dask
    if dask not in (None, "local") and options.threads is not None:
        raise UsageError(
            "--threads sets the worker count of --dask local; a cluster's workers have their own "
            "(dask worker --nworkers)"
        )
    threads = available_cores() if options.threads is None else options.threads
    sources = (options.before, options.after, options.grads)
    if dask is not None and any(isinstance(x, Mapping) for x in sources):
        raise UsageError("--dask workers open checkpoints by path; pass paths, not state dicts")
    ckpts = (
        open_checkpoint(options.before, "before"),
        open_checkpoint(options.after, "after"),
        open_checkpoint(options.grads, "grads") if options.grads is not None else None,
    )
    pairs, skipped = pair_tensors(
        *ckpts,
        strip_prefixes=options.strip_prefix,
        include=options.include,
        exclude=options.exclude,
    )
    layers: list[LayerRecord] = []
    total = TensorAccumulator(fmts, has_grads=options.grads is not None)
    per_tensor = dict(
        rescale=options.rescale,
        grad_eps=options.grad_eps,
        chunk=options.chunk_size,
        progress=progress,
    )
    with (
        one_torch_thread(),  # before the pool starts, so its threads begin with one torch thread
        ChunkPool(threads) if threads > 1 and dask is None else nullcontext() as pool,
    ):
        if dask is None:
            results = iter_tensor_results(pairs, ckpts, fmts, scaling_text, pool=pool, **per_tensor)
        else:
            results = iter_dask_results(
                pairs,
                fmts,
                address=dask,
                workers=threads,
                timeout=options.dask_timeout,
                **per_tensor,
            )
        for result in results:
            layers.extend(result.records())
            total.merge(result.accumulator)
    summary = []
    with_grads = sum(p.grad is not None for p in pairs)
    source = update_source(options.grads is not None, with_grads, len(pairs))
    for name, metrics in total.results().items():
        metrics = replace(metrics, update_source=source)
        own = [r for r in layers if r.format == name]
        updated = sorted(
            (r for r in own if r.metrics.updates),  # no update, no stall ratio
            key=lambda r: (-r.metrics.stall_ratio, r.name),
        )
        worst_rows = tuple(
            WorstRow(r.name, r.metrics.stall_ratio, r.metrics.updates, r.metrics.flips)
            for r in updated[:worst]
        )
        idle = len(own) - len(updated)
        summary.append(SummaryRecord(name, len(pairs), idle, metrics, worst_rows))
    return Report(
        inputs=Inputs(
            before=ckpts[0].path,
            after=ckpts[1].path,
            grads=None if ckpts[2] is None else ckpts[2].path,
        ),
        options=ReportOptions(
            formats=tuple(f.name for f in fmts),
            scaling=scaling_text,
            rescale=options.rescale,
            grad_eps=options.grad_eps,
            strip_prefix=options.strip_prefix,
            include=options.include,
            exclude=options.exclude,
            chunk_size=options.chunk_size,
        ),
        formats=tuple(
            from_json(FormatInfo, d)
            for d in {r.format.name: r.format.to_dict() for r in fmts}.values()
        ),
        layers=tuple(layers),
        summary=tuple(summary),
        skipped=tuple(skipped),
    )
