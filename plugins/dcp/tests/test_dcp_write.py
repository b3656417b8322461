"""Writing DCP: the layout ``dcp.save`` writes under FSDP2, proven by torch itself. A
fully_shard-ed model on 2 ranks and an unsharded one in a single process resume from what
ckpt-core wrote (weights and AdamW state through dcp.load + set_state_dict) and compute
exactly the next losses the source run computed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ckpt_core
from ckpt_core.compare import differences, tree_differences

torch = pytest.importorskip("torch")
LOAD_JOB = Path(__file__).with_name("dcp_load_job.py")


def resumed_losses(path: Path, ranks: int, *flags: str) -> list[str]:
    """What ``dcp_load_job.py`` computes after loading ``path`` (under torchrun when ``ranks`` > 1)."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks > 1 \
        else [sys.executable]
    done = subprocess.run([*launch, str(LOAD_JOB), str(path), *flags], capture_output=True, text=True, timeout=600,
                          cwd=LOAD_JOB.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def written(dcp_run, tmp_path_factory):
    """The FSDP2 checkpoint rewritten by ckpt-core for 2 ranks and for 1."""
    out = tmp_path_factory.mktemp("written")
    ckpt_core.convert(dcp_run / "fsdp2", out / "two", "dcp", {"world_size": 2})
    ckpt_core.convert(dcp_run / "fsdp2", out / "one", "dcp")
    return out


def test_fsdp2_resumes_from_it_with_the_same_next_losses(dcp_run, written):
    expected = json.loads((dcp_run / "fsdp2.losses.json").read_text())
    assert resumed_losses(written / "two", 2) == expected


def test_a_single_process_loads_it_unsharded_with_the_same_next_losses(dcp_run, written):
    expected = json.loads((dcp_run / "fsdp2.losses.json").read_text())
    assert resumed_losses(written / "one", 1) == expected


def test_hf_to_dcp_loads_into_fsdp2(dcp_run, tmp_path):
    """An HF directory (here ckpt-core's own from the FSDP2 run) written as DCP for 2 ranks
    starts an FSDP2 run with the source weights: the same first loss."""
    heads = {"n_head": 4, "n_kv_head": 2}
    ckpt_core.convert(dcp_run / "fsdp2", tmp_path / "hf", "hf", {"params": heads}, allow_loss=["train_state"])
    ckpt_core.convert(tmp_path / "hf", tmp_path / "dcp-init", "dcp", {"world_size": 2})
    expected = json.loads((dcp_run / "fsdp2.losses.json").read_text())
    assert resumed_losses(tmp_path / "dcp-init", 2, "--model-only")[0] == expected[0]


def test_layout_is_the_one_fsdp2_saved(dcp_run, written):
    """Same keys, planner paths, dtypes, sizes and chunks as torch's own 2-rank save (plus
    ckpt-core's one value), items in one file per rank."""
    from ckpt_plugin_dcp import metadata

    ours = {e.key: e for e in metadata.read(written / "two")}
    theirs = {e.key: e for e in metadata.read(dcp_run / "fsdp2")}
    assert set(ours) == set(theirs) | {"ckpt_core"}
    for key, e in theirs.items():
        o = ours[key]
        assert (o.path, o.dtype, o.size) == (e.path, e.dtype, e.size), key
        assert sorted((c.offsets, c.sizes) for c in o.chunks) == sorted((c.offsets, c.sizes) for c in e.chunks), key
    assert sorted(p.name for p in (written / "two").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]


def test_reads_back_exactly(dcp_run, written):
    source = ckpt_core.load(dcp_run / "fsdp2")
    for name in ("one", "two"):
        back = ckpt_core.load(written / name)
        assert differences(source, back) == []
        assert tree_differences(source.train_state.to_dict(), back.train_state.to_dict(), "train_state") == []


@pytest.mark.parametrize("world", [0, 2 ** 63 - 1])
def test_bad_world_size_is_a_usage_error(dcp_run, tmp_path, world):
    with pytest.raises(ckpt_core.UsageError, match="world_size must be a number of ranks from 1 to 131072"):
        ckpt_core.convert(dcp_run / "single", tmp_path / "out", "dcp", {"world_size": world})
    assert list(tmp_path.iterdir()) == []


def test_writing_imports_no_torch(dcp_run, tmp_path):
    """.metadata is pickled with stand-ins naming DCP's classes: torch is never imported
    (the other tests here load what it wrote with torch itself)."""
    code = ("import sys, ckpt_core\n"
            f"ckpt_core.convert({str(dcp_run / 'fsdp2')!r}, {str(tmp_path / 'out')!r}, 'dcp', {{'world_size': 2}})\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / ".metadata").is_file()


@pytest.mark.parametrize("world", [1, 3])
def test_hf_to_dcp_round_trips_through_dcp_load_bit_exact(dcp_run, tmp_path, world):
    """hf -> DCP (any world size, 3: uneven and empty shards) -> torch's own dcp.load in
    one process gives the hf model's tensors bit for bit."""
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file

    heads = {"n_head": 4, "n_kv_head": 2}
    ckpt_core.convert(dcp_run / "fsdp2", tmp_path / "hf", "hf", {"params": heads}, allow_loss=["train_state"])
    ckpt_core.convert(tmp_path / "hf", tmp_path / "dcp", "dcp", {"world_size": world}, allow_loss=["extra"])
    expected = load_file(tmp_path / "hf" / "model.safetensors")
    state = {"model": {k: torch.empty_like(v) for k, v in expected.items()}}
    dcp.load(state, checkpoint_id=tmp_path / "dcp", no_dist=True)
    assert all(torch.equal(state["model"][k].view(torch.uint8), v.view(torch.uint8)) for k, v in expected.items())


def test_rank_rows_of_an_fsdp2_tensor_stay_file_ranges(dcp_run):
    """Written for the source's world size, each rank's rows of a tensor FSDP2 split are a
    file range of the source (copied in the kernel); for another (4), file ranges joined
    where a rank's rows straddle two source chunks: never the whole tensor made in memory."""
    import numpy as np

    from ckpt_plugin_dcp.writer import _rows, _slice_rows

    ck = ckpt_core.load(dcp_run / "fsdp2")
    split = [t for t in ck.tensors.values() if t.parts]
    assert split
    for t in split:
        for world in (2, 4):
            pieces = [_slice_rows(t, a, b) for a, b in _rows(t, world) if b > a]
            ranges = [p.file_range is not None or (p.parts and all(q.file_range for q in p.parts)) for p in pieces]
            assert all(ranges) and (world == 4 or all(p.file_range for p in pieces)), (t, world)
            assert np.array_equal(np.concatenate([p.raw() for p in pieces]), t.raw())


def _tree(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_workers_1_and_2_write_the_same_bytes_and_count_every_byte(dcp_run, tmp_path, monkeypatch):
    """Each rank file is one ``pool.run`` job: 1 or 2 workers (and 3 ranks on 2 workers)
    give byte-identical directories, computed tensors (made per rank) included, and the
    progress listener sees the checkpoint's bytes. (Each item's ``.data/serialization_id``
    is a random number per ``torch.save``, as torch writes it: pinned here, the only
    difference two writes may have.)"""
    from ckpt_core import progress
    from ckpt_core.torchfile import writing

    monkeypatch.setattr(writing.secrets, "randbits", lambda bits: 2**bits - 1)

    source = ckpt_core.load(dcp_run / "fsdp2")
    ck = source.evolve(tensors={n: t.T.T if i % 3 == 0 else t for i, (n, t) in enumerate(source.tensors.items())})
    slots = source.train_state.optimizer.param_state.values()
    everything = ck.nbytes + sum(t.nbytes for state in slots for t in state.values() if isinstance(t, ckpt_core.Tensor))
    for world in (2, 3):
        trees, totals = [], []
        for workers in (1, 2):
            seen: list[int] = []
            with progress.listen(seen.append):
                ckpt_core.save(ck, tmp_path / f"w{world}-{workers}", "dcp", {"world_size": world}, workers=workers)
            trees.append(_tree(tmp_path / f"w{world}-{workers}"))
            totals.append(sum(seen))
        assert trees[0] == trees[1], world
        assert totals[0] == totals[1] >= everything, (world, totals)  # the workers' bytes reach the caller's bar
        assert differences(source, ckpt_core.load(tmp_path / f"w{world}-2")) == []


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_rank_file_leaves_nothing(dcp_run, tmp_path, workers):
    """Rank 1's rows come from the source's ``__1_0.distcp``, cut short after it was read:
    rank 1's job fails, rank 0's stops or finishes, the error is the one line naming the
    file, and neither the destination nor a temporary is left."""
    import shutil

    shutil.copytree(dcp_run / "fsdp2", tmp_path / "src")
    ck = ckpt_core.load(tmp_path / "src")
    victim = tmp_path / "src" / "__1_0.distcp"
    os.truncate(victim, victim.stat().st_size // 2)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ckpt_core.CorruptInput, match=r"__1_0\.distcp: file ends inside a tensor's data"):
        ckpt_core.save(ck, out / "dcp", "dcp", {"world_size": 2}, workers=workers)
    assert os.listdir(out) == []
