"""Rounding throughput: altgrad's e4m3fn codes and Q next to torch's native float8 cast, in one run.

    python benchmarks/bench_quantize.py [--numel 67108864] [--repeat 5] [--format e4m3fn]

Everything is timed on the same tensor in the same process; ratios are what to read, not seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from altgrad_cli import get_format, quantize
from altgrad_cli.numerics.rounding import encode_scaled, encode_scaled_bits

CHUNK = 1 << 20


def _median_seconds(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _chunked(fn, x: torch.Tensor):
    def run() -> None:
        for i in range(0, x.numel(), CHUNK):
            fn(x[i : i + CHUNK])

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=64 * 1024 * 1024)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--format", default="e4m3fn")
    args = parser.parse_args()
    fmt = get_format(args.format)
    torch.manual_seed(0)
    x = torch.randn(args.numel) * 100
    native = torch.float8_e4m3fn
    cases = {
        "torch .to(float8_e4m3fn), whole tensor": lambda: x.to(native),
        f"altgrad codes ({fmt.name}), 1M chunks": _chunked(lambda c: encode_scaled(c, fmt), x),
        f"altgrad codes, bit path ({fmt.name}), 1M chunks": _chunked(
            lambda c: encode_scaled_bits(c, fmt), x
        ),
        f"altgrad codes ({fmt.name}), whole tensor": lambda: encode_scaled(x, fmt),
        f"altgrad quantize ({fmt.name}), 1M chunks": _chunked(lambda c: quantize(c, fmt), x),
    }
    print(
        f"{args.numel:,} float32 elements, {torch.get_num_threads()} threads, median of {args.repeat}"
    )
    floor = None
    for label, fn in cases.items():
        seconds = _median_seconds(fn, args.repeat)
        floor = floor or seconds
        rate = args.numel / seconds / 1e6
        print(
            f"  {label:<48} {seconds * 1e3:8.1f} ms  {rate:8.0f} M elem/s  speed vs native {floor / seconds:5.2f}"
        )


if __name__ == "__main__":
    main()
