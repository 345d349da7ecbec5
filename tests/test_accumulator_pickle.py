"""Accumulators pickle (Dask ships one per task) with sparse histograms, and come back equal."""

from __future__ import annotations

import pickle

import torch

from altgrad_cli.engine.stats import BinnedCounts, UlpHistogram, dense_counts, sparse_counts
from altgrad_cli.engine.tensor import TensorAccumulator, accumulate_tensor
from altgrad_cli.numerics.formats import get_format


def test_sparse_counts_round_trip():
    counts = torch.zeros(1000, dtype=torch.int64)
    counts[[0, 7, 999]] = torch.tensor([5, 2**40, 1])
    length, index, values = sparse_counts(counts)
    assert length == 1000 and len(index) == len(values) == 3 * 8
    assert torch.equal(dense_counts((length, index, values)), counts)
    assert torch.equal(
        dense_counts(sparse_counts(torch.zeros(4, dtype=torch.int64))),
        torch.zeros(4, dtype=torch.int64),
    )


def test_histograms_pickle_small_and_equal():
    ulp = UlpHistogram()
    ulp.update(torch.tensor([0, 1, 1, 300, 2**40], dtype=torch.int64))
    back = pickle.loads(pickle.dumps(ulp))
    assert torch.equal(back.counts, ulp.counts)
    assert (back.n, back.total, back.max) == (ulp.n, ulp.total, ulp.max)
    assert len(pickle.dumps(ulp)) < 2000  # not the 32641 dense int64 bins
    binned = BinnedCounts.empty(-5, 5)
    binned.update(torch.tensor([-5, 0, 0, 9]))
    again = pickle.loads(pickle.dumps(binned))
    assert again.low == -5 and torch.equal(again.counts, binned.counts)


def test_tensor_accumulator_pickles_to_the_same_records():
    g = torch.Generator().manual_seed(3)
    before = torch.randn(64, 96, generator=g) * 0.02
    grad = torch.randn(64, 96, generator=g) * 1e-3
    after = before - 1e-3 * torch.sign(grad)
    formats = [get_format("e4m3fn"), get_format("e2m1")]
    acc, _ = accumulate_tensor(before, after, grad, formats, chunk=1000)
    back = pickle.loads(pickle.dumps(acc))
    assert back.results() == acc.results()
    merged, merged_back = (
        TensorAccumulator(tuple(formats), True),
        TensorAccumulator(tuple(formats), True),
    )
    merged.merge(acc)
    merged_back.merge(back)
    assert merged.results() == merged_back.results()
