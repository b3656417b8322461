"""Parallel file work (``ckpt_core.pool``, ``--workers``): the same bytes, the same
atomicity and every byte of progress with 1, 2 or 4 workers; a failing file stops the
others and leaves nothing behind."""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import ckpt_core
from ckpt_core import CorruptInput, UsageError, pool, progress
from ckpt_core.cli import main
from ckpt_core.tensor import same_bytes

SHARD = "300KB"  # the source's 12 tensors of 64-192 KB make 5 to 6 shards


@pytest.fixture(autouse=True)
def builtins_only(ckpt_plugins_only):
    ckpt_plugins_only()


@pytest.fixture
def source(tmp_path) -> Path:
    """A safetensors file of 12 tensors of several dtypes (file ranges when read)."""
    rng = np.random.default_rng(7)
    arrays = {}
    for i in range(12):
        rows = 64 * (1 + i % 3)
        kind = (np.float32, np.float16, np.int64)[i % 3]
        arrays[f"layers.{i}.weight"] = (rng.standard_normal((rows, 256)) * 100).astype(kind)
    path = tmp_path / "src.safetensors"
    save_file(arrays, str(path))
    return path


def mixed(source: Path) -> ckpt_core.Checkpoint:
    """The source with every third tensor computed (transposed twice: same bytes, no file
    range), so both the kernel-copy and the streaming paths write."""
    ck = ckpt_core.load(source)
    tensors = {n: t.T.T if i % 3 == 0 else t for i, (n, t) in enumerate(ck.tensors.items())}
    return ck.evolve(tensors=tensors)


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def hidden(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("fmt", ["canonical", "safetensors"])
def test_workers_1_2_4_write_byte_identical_trees(tmp_path, source, fmt):
    trees = {}
    for n in (1, 2, 4):
        dst = tmp_path / f"out-{n}"
        ckpt_core.save(mixed(source), dst, fmt, {"max_shard_size": SHARD}, workers=n)
        trees[n] = tree(dst)
    shards = [f for f in trees[1] if f.endswith(".safetensors")]
    assert len(shards) >= 5, shards
    assert trees[2] == trees[1] and trees[4] == trees[1]
    back = ckpt_core.load(tmp_path / "out-4")
    original = ckpt_core.load(source)
    assert list(back.tensors) == list(original.tensors)
    assert all(same_bytes(back.tensors[n], t) for n, t in original.tensors.items())
    expected = load_file(str(source))  # the upstream reader agrees, shard by shard
    for shard in shards:
        for name, array in load_file(str(tmp_path / "out-4" / shard)).items():
            assert array.tobytes() == expected[name].tobytes()


def test_cli_workers_flag_gives_the_same_canonical_tree_and_verifies(tmp_path, source, capsys):
    for n in (1, 3):
        with pytest.raises(SystemExit) as done:
            main(["convert", str(source), str(tmp_path / f"c{n}"), "--to", "canonical", "-o", f"max_shard_size={SHARD}",
                  "--workers", str(n), "--quiet"])
        assert done.value.code == 0, capsys.readouterr().err
    assert tree(tmp_path / "c3") == tree(tmp_path / "c1")
    ckpt_core.load(tmp_path / "c3", options={"verify": True})  # every checksum computed in the workers holds


def test_progress_counts_every_byte_once_with_workers(tmp_path, source):
    ck = mixed(source)
    seen = []
    with progress.listen(seen.append):
        ckpt_core.save(ck, tmp_path / "out", "safetensors", {"max_shard_size": SHARD}, workers=4)
    assert sum(seen) == ck.nbytes


@pytest.mark.parametrize("bad", ["0", "-1", "two", "65"])
def test_cli_workers_out_of_range_is_a_usage_error(tmp_path, source, capsys, bad):
    with pytest.raises(SystemExit) as done:
        main(["convert", str(source), str(tmp_path / "out"), "--to", "canonical", "--workers", bad])
    err = capsys.readouterr().err
    assert done.value.code == UsageError.exit_code
    assert err.count("\n") == 1 and "--workers" in err and "from 1 to 64" in err
    assert not (tmp_path / "out").exists()


def test_api_workers_out_of_range_is_a_usage_error(tmp_path, source):
    with pytest.raises(UsageError, match="from 1 to 64"):
        ckpt_core.save(ckpt_core.load(source), tmp_path / "out", "canonical", workers=0)
    assert os.listdir(tmp_path) == ["src.safetensors"]


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_source_truncated_under_a_worker_fails_cleanly_and_leaves_nothing(tmp_path, workers):
    """A shard's source file cut short after it was read (another program changed it): the
    worker copying it fails, the others stop, the error is one CorruptInput naming the
    file, and neither the destination nor a temporary is left."""
    rng = np.random.default_rng(3)
    src = tmp_path / "src"
    src.mkdir()
    arrays = {f"t{i}": rng.standard_normal((128, 256)).astype(np.float32) for i in range(8)}
    save_file(dict(list(arrays.items())[:4]), str(src / "a.safetensors"))
    save_file(dict(list(arrays.items())[4:]), str(src / "b.safetensors"))
    ck = ckpt_core.load(src / "a.safetensors")
    ck = ck.evolve(tensors={**ck.tensors, **ckpt_core.load(src / "b.safetensors").tensors})
    victim = src / "b.safetensors"
    os.truncate(victim, victim.stat().st_size - 1000)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CorruptInput, match="b.safetensors: file ends inside a tensor's data"):
        ckpt_core.save(ck, out / "canon", "canonical", {"max_shard_size": "140KB"}, workers=workers)
    assert os.listdir(out) == []


def test_a_failing_job_stops_the_running_ones_and_starts_no_more():
    """Job 0 fails once job 1 is running; job 1 (a writer reporting its chunks) stops at its
    next report; jobs 2.. never start; the failure, not the stop, is raised."""
    started, stopped = [], threading.Event()
    running = threading.Event()

    def failing():
        started.append(0)
        running.wait(10)
        raise CorruptInput("x.safetensors: broken")

    def writer():
        started.append(1)
        running.set()
        try:
            for _ in range(100_000):
                progress.advance(1)
                threading.Event().wait(0.001)
        except pool.Stopped:
            stopped.set()
            raise
        return "finished"

    def later(i):
        started.append(i)
        return i

    jobs = [failing, writer, *(functools.partial(later, i) for i in range(2, 6))]
    with pool.workers(2), pytest.raises(CorruptInput, match="broken"):
        pool.run(jobs)
    assert stopped.is_set()
    assert sorted(started) == [0, 1]


def test_results_come_back_in_job_order_and_nested_runs_stay_in_order():
    order = []

    def job(i):
        threading.Event().wait(0.01 * (5 - i))  # the first ones finish last
        inner = pool.run([functools.partial(order.append, (i, j)) for j in range(3)])
        assert inner == [None] * 3
        return i

    with pool.workers(4):
        assert pool.run([functools.partial(job, i) for i in range(5)]) == list(range(5))
    for i in range(5):
        assert [j for k, j in order if k == i] == [0, 1, 2]  # a job's own jobs ran here, in order


def test_one_worker_runs_in_order_in_this_thread():
    threads = []
    with pool.workers(1):
        pool.run([lambda: threads.append(threading.get_ident()) for _ in range(3)])
    assert threads == [threading.get_ident()] * 3
