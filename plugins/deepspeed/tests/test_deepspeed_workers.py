"""The deepspeed writer's files written in parallel (``--workers``, ``ckpt_core.pool``): one
job per rank file, model states and universal parameter folder. Any number of workers writes
the same bytes (but for the random ``.data/serialization_id`` torch and ckpt-core give
every torch file), and a job that fails leaves nothing behind."""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile

import pytest

import ckpt_core
from ckpt_core.errors import CkptError

LAYOUTS = [{"world_size": 2}, {"world_size": 4, "stage": 3}, {"universal": True}]


def contents(path):
    """Every file under ``path``: its size, and each zip record's offset and bytes (but the
    serialization id's), or its whole bytes."""
    out = {}
    for p in sorted(path.rglob("*")):
        if not p.is_file():
            continue
        if not zipfile.is_zipfile(p):
            out[str(p.relative_to(path))] = p.read_bytes()
            continue
        with zipfile.ZipFile(p) as z:
            records = {i.filename: (i.header_offset, hashlib.sha256(z.read(i)).hexdigest()) for i in z.infolist()
                       if not i.filename.endswith(".data/serialization_id")}
        out[str(p.relative_to(path))] = p.stat().st_size, records
    return out


@pytest.mark.parametrize("options", LAYOUTS, ids=["zero2-ws2", "zero3-ws4", "universal"])
def test_workers_write_the_same_bytes(ds_runs, tmp_path, options):
    ck = ckpt_core.load(ds_runs["z2-fp32-ws2"])
    written = {}
    for workers in (1, 2):
        ckpt_core.save(ck, tmp_path / f"w{workers}", "deepspeed", options, workers=workers)
        written[workers] = contents(tmp_path / f"w{workers}")
    assert len(written[1]) >= 3 and written[1] == written[2]


def test_a_failing_rank_leaves_nothing(ds_runs, tmp_path):
    """The source's rank 1 partition file truncated after loading: the job reading it fails,
    the other one stops, and neither the destination nor a temporary is left."""
    src = tmp_path / "src"
    shutil.copytree(ds_runs["z2-fp32-ws2"], src)
    ck = ckpt_core.load(src)
    rank1 = next((src / "global_step2").glob("*zero_pp_rank_1_*optim_states.pt"))
    os.truncate(rank1, rank1.stat().st_size // 2)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CkptError, match=rank1.name):
        ckpt_core.save(ck, out / "run", "deepspeed", {"world_size": 4, "stage": 3}, workers=2)
    assert os.listdir(out) == []
