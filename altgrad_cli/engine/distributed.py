"""Tensors, and chunk ranges of big tensors, as Dask tasks; the client merges them in a fixed order.

The numbers are the in-process numbers to the bit: a tensor's accumulator is the ordered fold of
its chunk ranges (`tensor.chunk_ranges`, which depends on the shape, scaling and chunk size only),
each range the ordered fold of its chunks, and a task computes whole ranges with the same engine
code under one torch thread. The client folds ranges into tensors and yields tensors in pair
order, as the in-process loop does, so neither the worker count nor the order in which tasks
finish changes a bit of the report.

A tensor of one range is one task. A bigger one is a scales task (the whole-tensor amax pass the
ranges all need) and one task per range that depends on it; Dask moves the scales between workers.
Workers open the checkpoint files by absolute path (shared storage), check that each tensor is
where the client found it, and unmap the files when the task ends. At most a few tasks per worker
thread are in flight, so results waiting to be merged stay bounded.

Dask is the optional extra `altgrad-cli[dask]`: nothing here imports it until a run asks for it.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor

from altgrad_cli.engine.forkserver import LOCAL, start_forkserver
from altgrad_cli.engine.tensor import (
    Bounds,
    TensorAccumulator,
    accumulate_ranges,
    accumulate_tensor,
    add_block_stats,
    chunk_ranges,
    scale_summaries,
    tensor_scales,
)
from altgrad_cli.engine.trajectory import Recipe as TrajectoryRecipe
from altgrad_cli.engine.trajectory import TrajectoryCounts, accumulate_trajectory
from altgrad_cli.errors import AltgradError, InputError, UsageError
from altgrad_cli.io.checkpoint import Checkpoint, TensorInfo
from altgrad_cli.io.pairing import Pair
from altgrad_cli.numerics.recipes import Recipe
from altgrad_cli.numerics.scaling import Scale, Scaling

DEFAULT_TIMEOUT = 10.0
"""Seconds to wait for the scheduler and for its first worker."""
IN_FLIGHT_PER_THREAD = 3
"""Tasks submitted ahead per worker thread: enough to keep every thread busy, few enough that
results finished out of order (held until their turn to merge) stay a bounded pile."""

Progress = Callable[[int, int, str], None]
Scales = list[tuple[Scale, Scale]]


class ClusterError(AltgradError):
    """Raised when Dask is not installed, the scheduler cannot be reached, or the cluster cannot
    finish the run (a task whose workers kept dying, a lost scheduler, a mismatched worker)."""


class RemoteInputError(Exception):
    """An InputError raised on a worker, carried back in a form that pickles (InputError's
    message is not its constructor's arguments), with the worker that raised it."""

    def __init__(self, path: str, problem: str, worker: str) -> None:
        super().__init__(path, problem, worker)
        self.path, self.problem, self.worker = path, problem, worker


@dataclass(frozen=True)
class Job:
    """What every task of one run needs besides its tensor."""

    recipes: tuple[Recipe, ...]
    rescale: bool
    grad_eps: float
    chunk: int

    @property
    def scalings(self) -> list[Scaling]:
        """The recipes' scalings: together they set the chunks (`tensor.chunk_ranges`)."""
        return [recipe.scaling for recipe in self.recipes]


# ----------------------------------------------------------------------------- worker side

_prepared_pid = 0


def _prepare_process() -> None:
    """A worker process runs torch on one intra-op thread, as the in-process chunks do (sums must
    not depend on the core count; set once and never restored, since several task threads share
    the setting), and keeps freed chunk buffers as the CLI does: the process is ours to tune."""
    global _prepared_pid
    if _prepared_pid == os.getpid():
        return
    import torch

    from altgrad_cli.engine.allocator import keep_freed_buffers

    torch.set_num_threads(1)
    keep_freed_buffers()
    _prepared_pid = os.getpid()


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


@contextmanager
def _on_worker() -> Iterator[None]:
    _prepare_process()
    try:
        yield
    except InputError as error:
        raise RemoteInputError(error.path, error.problem, _worker_name()) from None


def _read(info: TensorInfo, files: dict[str, Checkpoint]) -> Tensor:
    """The tensor the client planned, from the file at the same path on this machine."""
    if info.path not in files:
        files[info.path] = Checkpoint(info.path)
    found = files[info.path].tensors.get(info.name)
    if found is None or found[1] != info:
        raise InputError(
            info.path,
            f"tensor {info.name!r} differs from the client's copy of this file "
            "(every worker must see the same files at the same paths)",
        )
    return files[info.path].tensor(info.name)


def _tensors(pair: Pair) -> tuple[Tensor, Tensor, Tensor | None]:
    files: dict[str, Checkpoint] = {}  # dropped with the task: the maps unmap, RSS falls back
    grad = _read(pair.grad, files) if pair.grad is not None else None
    return _read(pair.before, files), _read(pair.after, files), grad


def whole_tensor_task(pair: Pair, job: Job) -> tuple[TensorAccumulator, dict[str, dict]]:
    """A tensor of at most one range: exactly the in-process `accumulate_tensor`."""
    with _on_worker():
        before, after, grad = _tensors(pair)
        return accumulate_tensor(
            before,
            after,
            grad,
            job.recipes,
            rescale=job.rescale,
            grad_eps=job.grad_eps,
            chunk=job.chunk,
        )


def scales_task(pair: Pair, job: Job) -> Scales:
    """The whole-tensor amax pass of a big tensor, whose every range task needs its result."""
    with _on_worker():
        before, after, _ = _tensors(pair)
        return tensor_scales(before, after, job.recipes, rescale=job.rescale)


def range_task(
    pair: Pair, job: Job, bounds: list[Bounds], scales: Scales, first: bool
) -> tuple[TensorAccumulator, dict[str, dict] | None]:
    """One chunk range of a big tensor; the first range also carries the scales' summary and
    block statistics (merged once, as in-process)."""
    with _on_worker():
        before, after, grad = _tensors(pair)
        (acc,) = accumulate_ranges(
            before, after, grad, job.recipes, scales, [bounds], grad_eps=job.grad_eps
        )
        if not first:
            return acc, None
        add_block_stats(acc, job.recipes, scales, rescale=job.rescale)
        return acc, scale_summaries(job.recipes, scales)


def worker_versions() -> tuple[str, str]:
    """(altgrad, torch) versions: the numbers are bit-exact only between equal builds."""
    import torch

    from altgrad_cli import __version__

    return __version__, torch.__version__


# ----------------------------------------------------------------------------- client side


def import_distributed() -> Any:
    """The `distributed` module, or a ClusterError naming the extra to install."""
    try:
        import distributed
    except ImportError as error:
        raise ClusterError(
            f"--dask needs Dask distributed, which is not installed ({error.msg}): "
            "pip install 'altgrad-cli[dask]'"
        ) from None
    return distributed


def run_on_dask(
    pairs: Sequence[Pair],
    job: Job,
    *,
    address: str,
    workers: int,
    timeout: float = DEFAULT_TIMEOUT,
    progress: Progress | None = None,
) -> Iterator[tuple[TensorAccumulator, dict[str, dict]]]:
    """(accumulator, scale summaries) of each pair, in pair order, computed on a Dask cluster:
    the scheduler at `address`, or a LocalCluster of `workers` single-threaded processes when
    `address` is "local". `progress(done, total, name)` is called as each task finishes."""
    pairs = [_absolute(pair) for pair in pairs]
    with _cluster(address, workers, timeout) as (distributed, client):
        yield from _ordered_results(distributed, client, pairs, job, progress)


@contextmanager
def _cluster(address: str, workers: int, timeout: float) -> Iterator[tuple[Any, Any]]:
    """(the distributed module, a client) of a checked cluster, with Dask's logs quiet."""
    distributed = import_distributed()
    if timeout <= 0:
        raise UsageError(f"--dask-timeout must be positive, got {timeout:g}")
    with _quiet_dask(), _client(distributed, address, workers, timeout) as client:
        _check_workers(client, address, timeout)
        yield distributed, client


def _absolute_info(info: TensorInfo | None) -> TensorInfo | None:
    """Workers run elsewhere, in another directory: they get absolute paths."""
    return None if info is None else replace(info, path=os.path.abspath(info.path))


def _absolute(pair: Pair) -> Pair:
    fix = _absolute_info
    return replace(pair, before=fix(pair.before), after=fix(pair.after), grad=fix(pair.grad))


@contextmanager
def _quiet_dask() -> Iterator[None]:
    """Dask logs lost connections, dead and restarted workers on stderr; the CLI's contract is
    one line per error, which the ClusterError gives. Logs come back as they were afterwards."""
    logger = logging.getLogger("distributed")
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


@contextmanager
def _client(distributed: Any, address: str, workers: int, timeout: float) -> Iterator[Any]:
    if address == LOCAL:
        with (
            local_cluster(workers) as cluster,
            distributed.Client(cluster, set_as_default=False) as client,
        ):
            yield client
        return
    try:
        client = distributed.Client(address, timeout=timeout, set_as_default=False)
    except ValueError as error:
        raise UsageError(f"--dask {address!r} is not a scheduler address ({error})") from None
    except (OSError, TimeoutError) as error:
        raise ClusterError(
            f"cannot reach the Dask scheduler at {address} within {timeout:g} s ({error})"
        ) from None
    with client:
        yield client


@contextmanager
def local_cluster(workers: int) -> Iterator[Any]:
    """`--dask local`: a LocalCluster of `workers` single-threaded worker processes, without a
    dashboard, quiet, forked from a server that has imported torch and altgrad already."""
    distributed = import_distributed()
    with (
        _forked_workers(distributed),  # also for workers the nanny restarts
        distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address="127.0.0.1:0",  # its HTTP server on a free port: no "8787 in use"
            scheduler_kwargs={"dashboard": False},
            silence_logs=logging.CRITICAL,
            memory_limit=0,  # mapped file pages count in RSS; our own memory is chunk-bounded
        ) as cluster,
    ):
        yield cluster


@contextmanager
def _forked_workers(distributed: Any) -> Iterator[None]:
    """LocalCluster workers forked from a server process that has imported Dask, torch and this
    module once, where the default (spawn) makes every worker import them again: 1-2 s of CPU per
    worker on a small machine, and slow exits. The server is single-threaded, so forking it is
    safe (it is Python's own default from 3.14 on); where there is none, Dask's default stays."""
    import multiprocessing

    import dask

    if "forkserver" not in multiprocessing.get_all_start_methods():
        yield
        return
    with dask.config.set(
        {
            "distributed.worker.multiprocessing-method": "forkserver",
            # the statistical profiler samples every worker's stacks each 10 ms: CPU our tasks
            # need more on a small machine, and nobody reads its profiles here
            "distributed.worker.profile.enabled": False,
        }
    ):
        distributed.utils.get_mp_context()  # sets Dask's preload list, once
        start_forkserver()  # ours instead (no pandas); a no-op when the CLI started it early
        yield


def _check_workers(client: Any, address: str, timeout: float) -> None:
    """At least one worker, and every worker on this client's altgrad and torch."""
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        raise ClusterError(
            f"the Dask scheduler at {address} has no workers (waited {timeout:g} s)"
        ) from None
    mine = worker_versions()
    try:
        theirs = client.run(worker_versions)
    except Exception as error:  # whatever the worker raised: usually it cannot import us
        raise ClusterError(
            f"the workers of {address} cannot run altgrad ({type(error).__name__}: {error}); "
            "install altgrad-cli[dask], this version, on every worker"
        ) from None
    for worker, versions in sorted(theirs.items()):
        if tuple(versions) != mine:
            raise ClusterError(
                f"worker {worker} runs altgrad {versions[0]} with torch {versions[1]}, this "
                f"client altgrad {mine[0]} with torch {mine[1]}: install the same on every worker"
            )


@dataclass(frozen=True)
class _Task:
    pair: int
    kind: str  # "whole" (a tensor of one range), "scales" or "range"
    last: bool  # the tensor's accumulator is complete once this task is merged


def _ordered_results(
    distributed: Any,
    client: Any,
    pairs: Sequence[Pair],
    job: Job,
    progress: Progress | None,
) -> Iterator[tuple[TensorAccumulator, dict[str, dict]]]:
    """Submit the tasks in order, a window at a time; merge finished ones from the head."""
    plans = [chunk_ranges(pair.before.shape, job.scalings, job.chunk) for pair in pairs]
    total = sum(1 if len(ranges) <= 1 else 1 + len(ranges) for ranges in plans)
    run = uuid.uuid4().hex[:12]  # keys of their own, never shared with another run
    scales: dict[int, Any] = {}  # a big tensor's scales, held until its last range is merged

    def submit(fn: Callable, *args: Any, key: str) -> Any:
        return client.submit(fn, *args, key=f"altgrad-{key}-{run}", pure=False)

    def tasks() -> Iterator[tuple[_Task, Any, str]]:
        for i, (pair, ranges) in enumerate(zip(pairs, plans, strict=True)):
            if len(ranges) <= 1:
                future = submit(whole_tensor_task, pair, job, key=f"tensor-{i}")
                yield _Task(i, "whole", True), future, pair.name
                continue
            scales[i] = submit(scales_task, pair, job, key=f"scales-{i}")
            yield _Task(i, "scales", False), scales[i], pair.name
            for j, bounds in enumerate(ranges):
                future = submit(
                    range_task, pair, job, bounds, scales[i], j == 0, key=f"range-{i}-{j}"
                )
                yield _Task(i, "range", j == len(ranges) - 1), future, pair.name

    acc: TensorAccumulator | None = None
    summary: dict[str, dict] | None = None
    with (
        _task_errors(distributed),
        closing(_in_order(distributed, client, tasks(), total, progress)) as finished,
    ):
        for task, future in finished:
            if task.kind == "scales":
                if future.status != "finished":
                    future.result()  # raises what the worker raised
                continue
            part, part_summary = future.result()
            future.release()
            if task.kind == "whole":
                yield part, part_summary
                continue
            if acc is None:  # the tensor's first range
                acc = TensorAccumulator(job.recipes, pairs[task.pair].grad is not None)
                summary = part_summary
            acc.merge(part)
            if task.last:
                scales.pop(task.pair).release()
                yield acc, summary
                acc, summary = None, None


def _in_order(
    distributed: Any,
    client: Any,
    submitted: Iterator[tuple[Any, Any, str]],
    total: int,
    progress: Progress | None,
) -> Iterator[tuple[Any, Any]]:
    """(tag, future) of each (tag, future, name) that `submitted` yields, in that order, once
    finished: the iterator submits as it is advanced, so it is advanced a window at a time (a
    few tasks per worker thread), keeping results finished out of order a bounded pile.
    `progress(done, total, name)` is called as each task finishes; what is still pending when
    the caller stops is cancelled. Errors come back from `future.result()` in the caller."""
    window = IN_FLIGHT_PER_THREAD * max(1, sum(client.nthreads().values()))
    queue: deque[tuple[Any, Any]] = deque()  # submitted, not yet handed back, in order
    finished = distributed.as_completed(loop=client.loop, with_results=False)
    seen: set[Any] = set()  # keys as_completed has reported: each is counted once
    names: dict[Any, str] = {}
    done = 0

    def wait_one() -> None:
        nonlocal done
        future = next(finished)
        seen.add(future.key)
        done += 1
        if progress is not None:
            progress(done, total, names.pop(future.key, ""))

    def head() -> Iterator[tuple[Any, Any]]:
        while queue and queue[0][1].key in seen:
            tag, future = queue.popleft()
            seen.discard(future.key)
            yield tag, future

    try:
        for tag, future, name in submitted:
            names[future.key] = name
            queue.append((tag, future))
            finished.add(future)
            while len(queue) >= window:
                wait_one()
                yield from head()
        while queue:
            wait_one()
            yield from head()
    finally:
        client.cancel([future for _, future in queue])


@contextmanager
def _task_errors(distributed: Any) -> Iterator[None]:
    """What a task raised, or what became of its workers, as the one-line errors of the CLI."""
    try:
        yield
    except RemoteInputError as error:
        raise InputError(error.path, f"{error.problem} (on worker {error.worker})") from None
    except distributed.KilledWorker as error:
        last = getattr(error.last_worker, "address", "unknown")
        raise ClusterError(
            f"Dask gave up on task {error.task}: the workers running it died (the last: {last})"
        ) from None
    except (CancelledError, OSError) as error:
        raise ClusterError(
            f"lost the Dask cluster mid-run ({type(error).__name__}: {error})"
        ) from None


# ----------------------------------------------------------------------------- trajectories


def trajectory_task(
    infos: tuple[TensorInfo, ...],
    recipes: tuple[TrajectoryRecipe, ...],
    fixed_scale: bool,
    chunk: int,
) -> tuple[dict[str, TrajectoryCounts], dict[str, dict]]:
    """One tensor over every checkpoint: exactly the in-process `accumulate_trajectory`."""
    with _on_worker():
        files: dict[str, Checkpoint] = {}
        tensors = [_read(info, files) for info in infos]
        return accumulate_trajectory(tensors, recipes, fixed_scale=fixed_scale, chunk=chunk)


def trajectory_on_dask(
    tracks: Sequence[tuple[str, tuple[TensorInfo, ...]]],
    recipes: tuple[TrajectoryRecipe, ...],
    *,
    fixed_scale: bool,
    chunk: int,
    address: str,
    workers: int,
    timeout: float = DEFAULT_TIMEOUT,
    progress: Progress | None = None,
) -> Iterator[tuple[dict[str, TrajectoryCounts], dict[str, dict]]]:
    """(counts, scale summary) of each (name, infos) track, in track order, one task per tensor
    (its checkpoints read where the task runs), a window of tasks in flight at a time."""
    tracks = [(name, tuple(map(_absolute_info, infos))) for name, infos in tracks]
    with _cluster(address, workers, timeout) as (distributed, client):
        run = uuid.uuid4().hex[:12]
        submitted = (
            (
                None,
                client.submit(
                    trajectory_task,
                    infos,
                    recipes,
                    fixed_scale,
                    chunk,
                    key=f"altgrad-track-{i}-{run}",
                    pure=False,
                ),
                name,
            )
            for i, (name, infos) in enumerate(tracks)
        )
        with (
            _task_errors(distributed),
            closing(_in_order(distributed, client, submitted, len(tracks), progress)) as finished,
        ):
            for _, future in finished:
                result = future.result()
                future.release()
                yield result
