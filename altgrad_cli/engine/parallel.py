"""Chunks on several cores, results in a fixed order.

torch's own intra-op threads only split the large elementwise ops; the histograms (bincount is
serial), the small ops and the Python between them leave the other cores idle. So each worker
thread takes whole chunks with torch limited to one thread (torch ops release the GIL), and the
caller merges the per-chunk partial results in chunk order: the same numbers, to the bit,
whatever the number of workers or cores.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one intra-op thread for the duration; the previous setting comes back after."""
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class ChunkPool(ThreadPoolExecutor):
    """A thread pool that knows its size, which bounds the work kept in flight."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers, thread_name_prefix="altgrad")
        self.workers = workers


def ordered_map(fn: Callable[[T], R], items: Iterable[T], pool: ChunkPool | None) -> Iterator[R]:
    """fn over items, on `pool` when given, yielded in input order; at most two tasks per worker
    are in flight, so finished results never pile up in memory."""
    if pool is None:
        yield from map(fn, items)
        return
    window = 2 * pool.workers
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
