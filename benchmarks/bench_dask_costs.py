"""The figures of the `--dask` cost model (README "On a Dask cluster"), measured on this machine.

    python benchmarks/bench_dask_costs.py            # 3 repetitions, the fastest kept

CPU time for the in-process figures, wall-clock time for Dask's. Timings:
  worker:  ns per element of one range task (8M fp32 elements, weights + after + grads read from
           memory-mapped files, one format), one process, torch on one thread
  scales:  ns per element of a big tensor's amax pass (its scales task)
  client:  ms per task to unpickle a range result and merge it into the tensor's accumulator
  dask:    ms per task of scheduling and returning results (no-op tasks on a 2-worker LocalCluster)

and from them the time of 7B, 70B and 405B checkpoints on N workers x C cores.
"""

from __future__ import annotations

import argparse
import os
import pickle
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from altgrad_cli.engine.allocator import keep_freed_buffers
from altgrad_cli.engine.tensor import TensorAccumulator, accumulate_ranges, chunk_ranges
from altgrad_cli.engine.tensor import tensor_scales as compute_scales
from altgrad_cli.io.checkpoint import Checkpoint
from altgrad_cli.numerics.recipes import get_recipe

ELEMENTS = 1 << 23  # one range at the default chunk size
MODELS = {"7B": 7e9, "70B": 70e9, "405B": 405e9}
CLUSTERS = [(1, 2), (4, 16), (16, 32), (64, 64)]


def best(fn, repeat: int, clock=time.process_time) -> float:
    """The fastest of `repeat` runs; CPU time by default (one thread: the time it was busy, which
    other processes on a shared machine inflate much less than the wall-clock time)."""
    times = []
    for _ in range(repeat):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times)


def _noop(i: int) -> int:
    return i


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    keep_freed_buffers()
    fmts = (get_recipe("e4m3fn", "tensor"),)
    with tempfile.TemporaryDirectory() as tmp:
        g = torch.Generator().manual_seed(0)
        before = torch.randn(ELEMENTS // 4096, 4096, generator=g) * 0.02
        grad = torch.randn(before.shape, generator=g) * 1e-3
        after = before - 1e-4 * torch.sign(grad)
        paths = []
        for side, t in (("before", before), ("after", after), ("grads", grad)):
            paths.append(Path(tmp) / f"{side}.safetensors")
            save_file({"w": t}, str(paths[-1]))
        del before, after, grad
        b, a, gr = (Checkpoint(p).tensor("w") for p in paths)
        scales = compute_scales(b, a, fmts)
        (bounds,) = chunk_ranges(tuple(b.shape), [r.scaling for r in fmts], 1 << 18)
        result: list[TensorAccumulator] = []

        def one_range() -> None:
            result[:] = accumulate_ranges(b, a, gr, fmts, scales, [bounds])

        worker = best(one_range, args.repeat) / ELEMENTS * 1e9
        amax = best(lambda: compute_scales(b, a, fmts), args.repeat) / ELEMENTS * 1e9
        raw = pickle.dumps(result[0])

        def merge_100() -> None:
            acc = TensorAccumulator(fmts, True)
            for _ in range(100):
                acc.merge(pickle.loads(raw))

        client = best(merge_100, args.repeat) * 10
    from altgrad_cli.engine.distributed import local_cluster

    distributed = __import__("distributed")
    with (
        local_cluster(2) as cluster,
        distributed.Client(cluster, set_as_default=False) as c,
    ):
        c.gather(c.map(_noop, range(100)))  # warm

        def tasks_1000() -> None:
            c.gather(c.map(_noop, range(1000), pure=False))

        dask = best(tasks_1000, args.repeat, time.perf_counter)  # s per 1000 = ms per task
    print(f"worker  {worker:8.1f} ns/element (one core, one format, with grads)")
    print(f"scales  {amax:8.1f} ns/element of a big tensor (its amax pass)")
    print(f"client  {client:8.3f} ms per task (unpickle {len(raw) / 1024:.0f} KiB + merge)")
    print(f"dask    {dask:8.3f} ms per task (scheduling, 2-worker LocalCluster, wall)")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print()
    print("predicted analyze time, one format, fp32 before/after/grads (compute only; add start-up")
    print("and check that storage delivers 12 bytes per element at the rate shown):")
    header = "".join(f"{f'{n} x {k}':>14}" for n, k in CLUSTERS)
    print(f"{'model':<8}{header}")
    for model, params in MODELS.items():
        tasks = params / ELEMENTS
        cells = []
        for n, k in CLUSTERS:
            compute = params * worker * 1e-9 / (n * k)
            serial = tasks * (client + dask) * 1e-3  # the client's share, overlapped with compute
            seconds = max(compute, serial)
            rate = params * 12 / seconds / 1e9
            cells.append(f"{seconds / 60:7.1f} m {rate:3.0f}G")
        print(f"{model:<8}" + "".join(f"{cell:>14}" for cell in cells))


if __name__ == "__main__":
    main()
