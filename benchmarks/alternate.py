"""(c) and (f) of bench.py run alternately, round by round: on a shared, noisy machine the ratio
of two runs minutes apart says more about the load than about the code; runs seconds apart share
it. Reports wall time, CPU time (user + system, which contention inflates less) and peak RssAnon.

    python benchmarks/alternate.py --rounds 4 [--scale 1] [--data bench-data]

Uses the workload bench.py writes (and writes it when missing).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
from pathlib import Path

from bench import measure, write_workload

RECIPES = ["mxfp8", "mxfp4", "nvfp4", "fp8_blockwise"]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--data", type=Path, default=Path("bench-data"))
    args = parser.parse_args()
    before, after, grads = write_workload(args.data / f"scale-{args.scale:g}", args.scale)
    base = [sys.executable, "-m", "altgrad_cli", "analyze", str(before), str(after)]
    base += ["--grads", str(grads), "-o", "json", "--quiet", "--out"]
    c = base + [str(before.parent / "alt-c.json")]
    f = base + [str(before.parent / "alt-f.json")] + [x for r in RECIPES for x in ("-f", r)]
    walls, cpus = [], []
    for i in range(args.rounds):
        t0 = _cpu()
        wall_c, peak_c = measure(c)
        t1 = _cpu()
        wall_f, peak_f = measure(f)
        t2 = _cpu()
        walls.append(wall_f / wall_c)
        cpus.append((t2 - t1) / (t1 - t0))
        print(
            f"round {i + 1}: (c) {wall_c:.2f} s, {peak_c / 1024:.0f} MiB; "
            f"(f) {wall_f:.2f} s, {peak_f / 1024:.0f} MiB; f/c {walls[-1]:.2f} "
            f"(CPU time {cpus[-1]:.2f})",
            flush=True,
        )
    print(
        f"f/c median {statistics.median(walls):.2f} (range {min(walls):.2f}-{max(walls):.2f}); "
        f"by CPU time {statistics.median(cpus):.2f} ({min(cpus):.2f}-{max(cpus):.2f})"
    )


if __name__ == "__main__":
    main()
