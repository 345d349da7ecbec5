"""altgrad analyze against its floors, on a Llama-shaped fp32 workload, in one run.

    python benchmarks/bench.py                 # full size: ~1.3 GB per file, ~4 GB of input
    python benchmarks/bench.py --scale 0.125   # an eighth of every big dimension
    python benchmarks/bench.py --small         # CI smoke test (< 30 s)

Cases, each in its own process, repeated, medians reported; peak anonymous memory (RssAnon,
sampled from /proc while the process runs) beside each:
  (a) read floor: open the three files and reduce every tensor once
  (b) cast floor: per 1M-element chunk, flips by torch's float8_e4m3fn cast of before/s and after/s,
      plus the non-zero gradient count
  (c) altgrad analyze, one format, every metric, JSON to a file
  (d) the same with four formats (e4m3fn, e5m2, E3M4, E0M7)
  (e) a plain whole-tensor implementation of the seed's formulas (the seed-style baseline)
  (f) altgrad analyze, four recipes: mxfp8, mxfp4, nvfp4, fp8_blockwise (block scales, 2-D tiles)
  (g) altgrad trajectory over 10 checkpoints of the same shapes (C0 = before; each later one
      drifts by k·Δ and dithers by a fresh N(0, 1/2)·1e-4), one format, JSON to a file; its time
      per checkpoint is compared with one analyze (c)
  (h) (c) on a 2-worker LocalCluster (`--dask local -j 2`), cluster start included; its JSON must
      equal (c)'s byte for byte (needs altgrad-cli[dask])
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.util
import json
import os
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

FULL_SHAPES = {
    "embed_tokens.weight": (32000, 4096),
    "q_proj.weight": (4096, 4096),
    "k_proj.weight": (4096, 4096),
    "v_proj.weight": (4096, 4096),
    "o_proj.weight": (4096, 4096),
    "gate_proj.weight": (11008, 4096),
    "up_proj.weight": (11008, 4096),
    "down_proj.weight": (4096, 11008),
    "input_layernorm.weight": (4096,),
    "post_attention_layernorm.weight": (4096,),
}
CHUNK_ROWS = 256


def shapes(scale: float) -> dict[str, tuple[int, ...]]:
    return {
        name: tuple(max(1, round(d * scale)) for d in shape) for name, shape in FULL_SHAPES.items()
    }


def _rows(name: str, shape: tuple[int, ...], seed: int):
    """Deterministic (before, after, grad) row blocks of one tensor."""
    rows = shape[0] if len(shape) > 1 else 1
    cols = shape[-1]
    for r0 in range(0, rows, CHUNK_ROWS):
        r1 = min(rows, r0 + CHUNK_ROWS)
        g = torch.Generator().manual_seed(seed * 1_000_003 + r0)
        before = torch.randn(r1 - r0, cols, generator=g) * 0.02
        grad = torch.randn(r1 - r0, cols, generator=g) * 1e-3
        if name.startswith("embed"):
            keep = (torch.arange(r0, r1) % 10 == 0).unsqueeze(
                1
            )  # 90 % of embedding rows get no gradient
            grad = torch.where(keep, grad, torch.zeros(()))
        step = 1e-4 * torch.sign(grad) * (0.5 + 0.5 * torch.rand(r1 - r0, cols, generator=g))
        yield before, before - step, grad


def write_workload(folder: Path, scale: float) -> list[Path]:
    """Write before/after/grads.safetensors chunk by chunk (never a whole tensor in memory)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{side}.safetensors" for side in ("before", "after", "grads")]
    stamp = folder / f"done-{scale}"
    if stamp.exists():
        return paths
    table = shapes(scale)
    header, offset = {}, 0
    for name, shape in table.items():
        size = 4 * int(torch.tensor(shape).prod())
        header[name] = {
            "dtype": "F32",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    handles = [open(p, "wb") for p in paths]  # noqa: SIM115
    try:
        for h in handles:
            h.write(struct.pack("<Q", len(raw)) + raw)
        for seed, (name, shape) in enumerate(table.items()):
            for blocks in _rows(name, shape, seed):
                for h, block in zip(handles, blocks, strict=True):
                    h.write(block.contiguous().numpy().tobytes())
    finally:
        for h in handles:
            h.close()
    stamp.touch()
    return paths


TRAJECTORY_CHECKPOINTS = 10


def write_trajectory(folder: Path, scale: float) -> list[Path]:
    """Write C0 … C9 block by block: C_k = before − k·Δ + 1e-4·N(0, 1/2), Δ the workload's step,
    so every element drifts one way and dithers around the drift (flips, flip-backs, frozen runs)."""
    paths = [folder / f"trajectory-{k}.safetensors" for k in range(TRAJECTORY_CHECKPOINTS)]
    stamp = folder / f"trajectory-done-{scale}"
    if stamp.exists():
        return paths
    table = shapes(scale)
    header, offset = {}, 0
    for name, shape in table.items():
        size = 4 * int(torch.tensor(shape).prod())
        header[name] = {
            "dtype": "F32",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    handles = [open(p, "wb") for p in paths]  # noqa: SIM115
    try:
        for h in handles:
            h.write(struct.pack("<Q", len(raw)) + raw)
        for seed, (name, shape) in enumerate(table.items()):
            for r0, (before, after, _) in enumerate(_rows(name, shape, seed)):
                step = before - after
                for k, h in enumerate(handles):
                    g = torch.Generator().manual_seed((seed * 1_000_003 + r0) * 16 + k)
                    dither = torch.randn(before.shape, generator=g) * 0.5e-4
                    h.write((before - k * step + dither).contiguous().numpy().tobytes())
    finally:
        for h in handles:
            h.close()
    stamp.touch()
    return paths


# ----------------------------------------------------------------------------- the cases (child side)


def case_read(paths: list[Path]) -> None:
    from altgrad_cli.io.checkpoint import Checkpoint

    total = 0.0
    for path in paths:
        ckpt = Checkpoint(path)
        for name in ckpt.names():
            flat = ckpt.tensor(name).reshape(-1)
            for i in range(0, flat.numel(), 1 << 20):
                total += float(flat[i : i + (1 << 20)].sum())
    print(total)


def case_cast(paths: list[Path]) -> None:
    from altgrad_cli.io.checkpoint import Checkpoint

    before, after, grads = (Checkpoint(p) for p in paths)
    flips = updates = 0
    for name in before.names():
        b, a, g = (c.tensor(name).reshape(-1) for c in (before, after, grads))
        s = b.abs().amax() / 448.0
        for i in range(0, b.numel(), 1 << 20):
            cb = (b[i : i + (1 << 20)] / s).to(torch.float8_e4m3fn).view(torch.uint8)
            ca = (a[i : i + (1 << 20)] / s).to(torch.float8_e4m3fn).view(torch.uint8)
            flips += int((cb != ca).sum())
            updates += int((g[i : i + (1 << 20)] != 0).sum())
    print(flips, updates)


def case_seed(paths: list[Path]) -> None:
    """The seed's formulas on whole tensors, as the seed plans wrote them (seed_baseline.py)."""
    from seed_baseline import (
        E4M3,
        WeightFlipTracker,
        gradient_stiffness_correlation,
        grid_alignment_statistics,
        ulp_statistics,
    )

    from altgrad_cli.io.checkpoint import Checkpoint

    before, after, grads = (Checkpoint(p) for p in paths)
    tracker = WeightFlipTracker()
    for name in before.names():
        b, a, g = (c.tensor(name) for c in (before, after, grads))
        scale = b.abs().amax() / E4M3.max_value
        tracker.snapshot_pre_step(name, b, E4M3, scale, grad=g)
        tracker.compute_flips_post_step(name, a, E4M3, scale)
        grid_alignment_statistics(b, E4M3, scale)
        ulp_statistics(b, a)
        gradient_stiffness_correlation(b, g, E4M3.mantissa_bits)
    print(tracker.get_stall_ratios())


CHILD = {"read": case_read, "cast": case_cast, "seed": case_seed}


# ----------------------------------------------------------------------------- timing (parent side)


def _peak_anon(pid: int, stop: threading.Event, out: list[int]) -> None:
    peak = 0
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as handle:
                for line in handle:
                    if line.startswith("RssAnon:"):
                        peak = max(peak, int(line.split()[1]))
        except OSError:
            break
        time.sleep(0.005)
    out.append(peak)


def measure(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RssAnon (KiB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stop, peak = threading.Event(), []
    sampler = threading.Thread(target=_peak_anon, args=(proc.pid, stop, peak))
    sampler.start()
    _, err = proc.communicate()
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{err.decode()}")
    return seconds, peak[0] if peak else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scale", type=float, default=1.0, help="fraction of every big dimension (1 = full size)"
    )
    parser.add_argument(
        "--small",
        action="store_true",
        help="CI smoke test: scale 1/64, one repetition, no seed case",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path("bench-data"))
    parser.add_argument(
        "--skip-seed", action="store_true", help="leave out (e), the slow seed-style baseline"
    )
    parser.add_argument(
        "--only", default="abcdefgh", help="the cases to run, by letter (default: abcdefgh)"
    )
    parser.add_argument("--child", choices=sorted(CHILD), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.small:
        args.scale, args.repeat = 1 / 64, 1
    if args.small or args.skip_seed:
        args.only = args.only.replace("e", "")
    folder = args.data / f"scale-{args.scale:g}"
    paths = write_workload(folder, args.scale)
    if args.child:
        CHILD[args.child](paths)
        return
    py = sys.executable
    me = [py, __file__, "--scale", str(args.scale), "--data", str(args.data)]
    analyze = [
        py,
        "-m",
        "altgrad_cli",
        "analyze",
        str(paths[0]),
        str(paths[1]),
        "--grads",
        str(paths[2]),
        "-o",
        "json",
        "--quiet",
    ]
    cases = {
        "(a) read floor": me + ["--child", "read"],
        "(b) cast floor": me + ["--child", "cast"],
        "(c) analyze, 1 format": analyze + ["--out", str(folder / "c.json")],
        "(d) analyze, 4 formats": analyze
        + [
            "-f",
            "e4m3fn",
            "-f",
            "e5m2",
            "-f",
            "E3M4",
            "-f",
            "E0M7",
            "--out",
            str(folder / "d.json"),
        ],
        "(e) seed-style, whole tensors": me + ["--child", "seed"],
        "(h) analyze, 2-worker LocalCluster": analyze
        + ["--dask", "local", "--threads", "2", "--out", str(folder / "h.json")],
        "(f) analyze, 4 recipes": analyze
        + [
            "-f",
            "mxfp8",
            "-f",
            "mxfp4",
            "-f",
            "nvfp4",
            "-f",
            "fp8_blockwise",
            "--out",
            str(folder / "f.json"),
        ],
    }
    if "h" in args.only and importlib.util.find_spec("distributed") is None:
        print("(h) left out: Dask is not installed (pip install 'altgrad-cli[dask]')")
        args.only = args.only.replace("h", "")
    if "g" in args.only:
        series = write_trajectory(folder, args.scale)
        cases["(g) trajectory, 10 checkpoints"] = [
            py,
            "-m",
            "altgrad_cli",
            "trajectory",
            *map(str, series),
            "-o",
            "json",
            "--quiet",
            "--out",
            str(folder / "g.json"),
        ]
    size = sum(p.stat().st_size for p in paths)
    print(
        f"workload: scale {args.scale:g}, {size / 2**30:.2f} GiB in 3 files; {os.cpu_count()} cores; torch {torch.__version__}"
    )
    print(f"{'case':<36} {'median s':>9} {'runs':>5} {'min-max s':>13} {'peak RssAnon MiB':>17}")
    medians = {}
    cases = {label: argv for label, argv in cases.items() if label[1] in args.only}
    for label, argv in cases.items():
        runs = [measure(argv) for _ in range(1 if label.startswith("(e)") else args.repeat)]
        medians[label[:3]] = statistics.median(s for s, _ in runs)
        peak = max(p for _, p in runs) / 1024
        spread = f"{min(s for s, _ in runs):.2f}-{max(s for s, _ in runs):.2f}"
        print(f"{label:<36} {medians[label[:3]]:>9.2f} {len(runs):>5} {spread:>13} {peak:>17.0f}")
    if (
        "(h)" in medians
        and "(c)" in medians
        and not filecmp.cmp(folder / "c.json", folder / "h.json", shallow=False)
    ):
        raise SystemExit("(h) wrote other JSON than (c): the Dask run must not change a byte")
    ratios = [
        ("c/b", "(c)", "(b)"),
        ("d/c", "(d)", "(c)"),
        ("e/c", "(e)", "(c)"),
        ("h/c", "(h)", "(c)"),
        ("f/c", "(f)", "(c)"),
    ]
    if "(g)" in medians:
        medians["(g1)"] = medians["(g)"] / TRAJECTORY_CHECKPOINTS
        ratios.append(("(g per checkpoint)/c", "(g1)", "(c)"))
    print(
        "  ".join(
            f"{name} = {medians[x] / medians[y]:.2f}"
            for name, x, y in ratios
            if x in medians and y in medians
        )
    )


if __name__ == "__main__":
    main()
