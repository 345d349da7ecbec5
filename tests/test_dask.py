"""`--dask`: the analysis as Dask tasks gives the in-process JSON byte for byte, and fails in one line.

One LocalCluster (worker processes, 2 workers x 1 thread, as the issue asks) serves the module;
one test starts its own through `--dask local`. The killed-worker test runs last: the cluster's
nanny restarts the worker it kills.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
from collections import Counter

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

distributed = pytest.importorskip(
    "distributed", reason="Dask distributed is not installed (pip install 'altgrad-cli[dask]')"
)

import altgrad_cli.engine.distributed as distributed_engine  # noqa: E402
from altgrad_cli.cli.app import app  # noqa: E402
from altgrad_cli.engine.distributed import Job, local_cluster, run_on_dask  # noqa: E402
from altgrad_cli.engine.tensor import RANGE_CHUNKS, chunk_ranges  # noqa: E402
from altgrad_cli.errors import InputError  # noqa: E402
from altgrad_cli.io.checkpoint import Checkpoint  # noqa: E402
from altgrad_cli.io.pairing import pair_tensors  # noqa: E402
from altgrad_cli.numerics.recipes import get_recipe  # noqa: E402
from altgrad_cli.numerics.scaling import parse_scaling  # noqa: E402
from altgrad_cli.pipeline import analyze  # noqa: E402
from altgrad_cli.report.render.json_out import render_json  # noqa: E402
from altgrad_cli.trajectories import trajectory  # noqa: E402

SAMPLE = [f"sample_checkpoints/{side}.safetensors" for side in ("before", "after")]
GRADS = "sample_checkpoints/grads.safetensors"
CHUNK = 1024  # small chunks, so a 300K-element tensor is many ranges of RANGE_CHUNKS chunks


def run(*args: str):
    return CliRunner().invoke(app, ["analyze", *map(str, args)], env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def cluster():
    """The cluster `--dask local -j 2` starts; the tests reach it by its address."""
    with local_cluster(2) as local:
        yield local


@pytest.fixture(scope="module")
def client(cluster):
    with distributed.Client(cluster, set_as_default=False) as c:
        c.wait_for_workers(2)
        yield c


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A two-shard checkpoint (index + weight_map) whose embedding is many chunk ranges."""
    root = tmp_path_factory.mktemp("sharded")
    g = torch.Generator().manual_seed(18)
    shapes = {
        "model.embed.weight": (600, 512),  # 300 chunks of 1024: 10 ranges, the last one short
        "model.layers.0.mlp.weight": (96, 64),
        "model.layers.0.norm.weight": (64,),
        "model.layers.1.mlp.weight": (64, 96),
        "model.head.weight": (0, 8),  # empty: no chunk at all
    }
    before = {n: torch.randn(s, generator=g) * 0.02 for n, s in shapes.items()}
    before["model.embed.weight"][::7] = 0.0  # rows of zeros take the kernel's other path
    grads = {n: torch.randn(s, generator=g) * 1e-3 for n, s in shapes.items()}
    after = {n: b - 1e-3 * torch.sign(grads[n]) for n, b in before.items()}
    before["model.layers.1.mlp.weight"] = before["model.layers.1.mlp.weight"].bfloat16()
    after["model.layers.1.mlp.weight"] = after["model.layers.1.mlp.weight"].bfloat16()
    shard_of = {n: f"model-0000{1 + (i % 2)}-of-00002.safetensors" for i, n in enumerate(shapes)}
    paths = []
    for side, tensors in (("before", before), ("after", after), ("grads", grads)):
        folder = root / side
        folder.mkdir()
        for shard in sorted(set(shard_of.values())):
            save_file(
                {n: t.contiguous() for n, t in tensors.items() if shard_of[n] == shard},
                str(folder / shard),
            )
        index = {"metadata": {}, "weight_map": shard_of}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        paths.append(folder)
    return paths


def test_the_synthetic_checkpoint_is_many_ranges():
    ranges = chunk_ranges((600, 512), [parse_scaling("tensor")], CHUNK)
    assert len(ranges) == 10 and sum(map(len, ranges)) == 300
    assert all(len(r) == RANGE_CHUNKS for r in ranges[:-1]) and len(ranges[-1]) == 300 - 9 * 32


def test_sample_local_cluster_is_byte_identical():
    """`--dask local` starts its own LocalCluster of --threads worker processes."""
    args = [*SAMPLE, "--grads", GRADS, "-o", "json", "-f", "e4m3fn", "-f", "e2m1"]
    here = run(*args, "--threads", "1")
    there = run(*args, "--threads", "2", "--dask", "local")
    assert here.exit_code == 0, here.output
    assert there.exit_code == 0, there.output
    assert there.stdout == here.stdout
    assert there.stderr == ""  # Dask's logs of starting and stopping workers stay quiet


@pytest.mark.parametrize(
    "options",
    [
        ["-f", "e4m3fn", "-f", "e5m2"],
        ["-f", "e2m1", "--scaling", "block:32:rceil", "--rescale"],
        ["-f", "e3m2", "--scaling", "channel"],
    ],
    ids=["tensor", "block-rescale", "channel"],
)
def test_sharded_ranges_are_byte_identical(cluster, sharded, options):
    before, after, grads = sharded
    args = [before, after, "--grads", grads, "-o", "json", "--chunk-size", CHUNK, *options]
    here = run(*args, "--threads", "1")
    there = run(*args, "--dask", cluster.scheduler_address)
    assert here.exit_code == 0, here.output
    assert there.exit_code == 0, there.output
    assert there.stdout == here.stdout
    report = json.loads(there.stdout)
    embed = [r for r in report["layers"] if r["name"] == "model.embed.weight"]
    assert embed and all(r["numel"] == 600 * 512 for r in embed)


def test_progress_counts_every_task(cluster, sharded):
    before, after, grads = sharded
    calls = []
    analyze(
        before,
        after,
        grads=grads,
        chunk_size=CHUNK,
        dask=cluster.scheduler_address,
        progress=lambda done, total, name: calls.append((done, total, name)),
    )
    # the embedding: a scales task and 10 ranges; every other tensor one task
    assert [done for done, _, _ in calls] == list(range(1, 16))
    assert {total for _, total, _ in calls} == {15}
    assert sum(name == "model.embed.weight" for _, _, name in calls) == 11


def test_threads_with_a_cluster_address_is_a_usage_error():
    result = run(*SAMPLE, "--dask", "tcp://127.0.0.1:8786", "--threads", "4")
    assert result.exit_code == 2
    assert "--threads sets the worker count of --dask local" in result.stderr


def test_missing_extra_is_one_line_exit_3(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    result = run(*SAMPLE, "--dask", "local", "-o", "json")
    assert result.exit_code == 3
    assert result.stdout == ""
    assert "pip install 'altgrad-cli[dask]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unreachable_scheduler_is_one_line_exit_3():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    result = run(*SAMPLE, "--dask", address, "--dask-timeout", "1", "-o", "json")
    assert result.exit_code == 3
    assert result.stdout == ""
    assert f"cannot reach the Dask scheduler at {address} within 1 s" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _planned(sharded):
    before, after, grads = (Checkpoint(p) for p in sharded)
    pairs, _ = pair_tensors(before, after, grads)
    job = Job((get_recipe("e4m3fn", "tensor"),), False, 1e-10, CHUNK)
    return pairs, job


def test_worker_that_cannot_read_a_path_names_it_and_the_worker(cluster, sharded, tmp_path):
    pairs, job = _planned(sharded)  # the client has read every header
    shard = sharded[1] / "model-00002-of-00002.safetensors"
    hidden = tmp_path / "elsewhere.safetensors"
    os.rename(shard, hidden)  # ... and now the workers cannot find this shard
    try:
        with pytest.raises(InputError) as caught:
            list(run_on_dask(pairs, job, address=cluster.scheduler_address, workers=2))
    finally:
        os.rename(hidden, shard)
    message = str(caught.value)
    assert message.startswith(f"{shard}: no such file or directory (on worker tcp://")
    assert message.split("(on worker ")[1].rstrip(")") in cluster.scheduler_info["workers"]
    assert "\n" not in message


def test_worker_seeing_another_file_at_the_path_says_so(cluster, sharded, tmp_path):
    pairs, job = _planned(sharded)
    shard = sharded[0] / "model-00001-of-00002.safetensors"
    kept = tmp_path / "kept.safetensors"
    os.rename(shard, kept)
    try:  # the same tensors behind the same path, moved by one more at the front of the file
        tensors = Checkpoint(kept)
        other = {n: tensors.tensor(n).clone() for n in tensors.names()}
        save_file({"a.first": torch.zeros(3), **other}, shard)
        moved = Checkpoint(shard).info("model.embed.weight").begin
        assert moved != tensors.info("model.embed.weight").begin
        with pytest.raises(InputError, match="differs from the client's copy of this file"):
            list(run_on_dask(pairs, job, address=cluster.scheduler_address, workers=2))
    finally:
        os.replace(kept, shard)


# ----------------------------------------------------------------------------- trajectory

TRAJECTORY = sorted(
    str(p)
    for p in __import__("pathlib").Path("sample_checkpoints/trajectory").glob("*.safetensors")
)


def run_trajectory(*args: str):
    return CliRunner().invoke(app, ["trajectory", *map(str, args)], env={"COLUMNS": "200"})


@pytest.mark.parametrize(
    "options",
    [
        ["-f", "e4m3fn", "-f", "e2m1"],
        ["-f", "mxfp4", "--fixed-scale", "--per-step"],
    ],
    ids=["own-scales", "fixed-scale-per-step"],
)
def test_trajectory_on_a_cluster_is_byte_identical(cluster, options):
    assert len(TRAJECTORY) >= 3
    args = [*TRAJECTORY, "-o", "json", "--chunk-size", "4096", *options]
    here = run_trajectory(*args, "--threads", "1")
    there = run_trajectory(*args, "--dask", cluster.scheduler_address)
    assert here.exit_code == 0, here.output
    assert there.exit_code == 0, there.output
    assert there.stdout == here.stdout
    assert json.loads(there.stdout)["layers"]


def test_trajectory_local_cluster_and_its_errors(tmp_path):
    args = [*TRAJECTORY[:3], "-o", "json"]
    here = run_trajectory(*args, "--threads", "1")
    there = run_trajectory(*args, "--threads", "2", "--dask", "local")
    assert there.exit_code == 0, there.output
    assert there.stdout == here.stdout
    wrong = run_trajectory(*args, "--dask", "tcp://127.0.0.1:8786", "--threads", "2")
    assert wrong.exit_code == 2 and "--threads sets the worker count" in wrong.stderr
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gone = run_trajectory(*args, "--dask", f"tcp://127.0.0.1:{port}", "--dask-timeout", "1")
    assert gone.exit_code == 3 and gone.stdout == ""
    assert len(gone.stderr.strip().splitlines()) == 1 and "cannot reach" in gone.stderr


def test_trajectory_worker_that_cannot_read_a_path_names_it(cluster, tmp_path, monkeypatch):
    copies = []
    for path in TRAJECTORY[:3]:
        copies.append(tmp_path / os.path.basename(path))
        shutil.copy(path, copies[-1])
    original = distributed_engine.trajectory_on_dask

    def plan_then_remove(tracks, *args, **kwargs):
        """The client has planned with every file present; the workers find the last one gone."""
        copies[-1].unlink()
        return original(tracks, *args, **kwargs)

    monkeypatch.setattr(distributed_engine, "trajectory_on_dask", plan_then_remove)
    with pytest.raises(InputError) as error:
        trajectory(copies, dask=cluster.scheduler_address)
    assert str(copies[-1]) in str(error.value) and "on worker tcp://" in str(error.value)


def test_killed_worker_tasks_are_retried_and_the_json_is_identical(cluster, client, sharded):
    before, after, grads = sharded
    options = dict(grads=grads, formats=["e4m3fn", "e5m2"], chunk_size=CHUNK)
    reference = render_json(analyze(before, after, threads=1, **options))
    pids = client.run(os.getpid)
    killed: list[str] = []

    def kill_a_busy_worker(done: int, total: int, name: str) -> None:
        if killed:
            return
        busy = [w for w, keys in client.processing().items() if keys and w in pids]
        if busy:
            os.kill(pids[busy[0]], signal.SIGKILL)
            killed.append(busy[0])

    report = analyze(
        before, after, dask=cluster.scheduler_address, progress=kill_a_busy_worker, **options
    )
    assert killed, "no worker was busy when the first task finished"
    assert render_json(report) == reference
    assert killed[0] not in client.scheduler_info()["workers"]
    assert client.run_on_scheduler(_tasks_run_twice) > 0  # the dead worker's tasks, retried


def _tasks_run_twice(dask_scheduler) -> int:
    """altgrad tasks the scheduler sent to a worker more than once."""
    starts = Counter(
        entry[0]
        for entry in dask_scheduler.transition_log
        if entry[2] == "processing" and str(entry[0]).startswith("altgrad-")
    )
    return sum(n > 1 for n in starts.values())


def test_the_fork_server_starts_once_with_our_preload():
    """The CLI starts it before importing torch (engine/forkserver.py); starting it again is a
    no-op, and it preloads Dask and our tasks, never pandas."""
    import multiprocessing.forkserver as fs

    from altgrad_cli.engine.forkserver import PRELOAD, start_forkserver

    assert start_forkserver() is True
    pid = fs._forkserver._forkserver_pid
    assert pid is not None and start_forkserver() is True
    assert fs._forkserver._forkserver_pid == pid
    assert fs._forkserver._preload_modules == PRELOAD
