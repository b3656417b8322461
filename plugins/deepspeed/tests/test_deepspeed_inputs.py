"""DeepSpeed save directories as run directories, damaged and hostile ones, and the
conformance suite, on checkpoints DeepSpeed's engine wrote this session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

import ckpt_core
from ckpt_core.testing import FormatConformance

CLI = [sys.executable, "-m", "ckpt_core"]
RUN = "z2-fp32-ws2"


def optim_file(tag, rank):
    return tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"


@pytest.fixture
def run(ds_runs, tmp_path):
    """A copy of a 2-rank ZeRO-2 save directory: latest -> global_step2, and global_step1."""
    dst = tmp_path / "run"
    shutil.copytree(ds_runs[RUN], dst, ignore=shutil.ignore_patterns("expected.pt"))
    return dst


def cli(*args):
    done = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True)
    return done.returncode, done.stdout, done.stderr


def test_run_directory_by_step(run):
    fmt, entries = ckpt_core.list_checkpoints(run)
    assert fmt == "deepspeed" and [(e.step, e.complete, e.tags) for e in entries] == [
        (1, True, frozenset()), (2, True, frozenset({"latest"}))]
    code, out, _ = cli("latest", run)
    assert code == 0 and out.strip().endswith("global_step2")
    optim_file(run / "global_step2", 1).unlink()  # an interrupted save: rank 1 never wrote
    entries = ckpt_core.list_checkpoints(run)[1]
    assert not entries[1].complete and "rank 1 of 2" in entries[1].note
    assert ckpt_core.latest(run).path == run / "global_step1"
    assert [e.path.name for e in ckpt_core.prune(run, keep=1)] == []  # never the incomplete one, never the only complete one


def test_prune_spares_the_tag_latest_names(run):
    (run / "latest").write_text("global_step1")  # a user pointed DeepSpeed back at step 1
    assert ckpt_core.latest(run).path == run / "global_step2"  # by step, not by the pointer
    assert ckpt_core.prune(run, keep=1) == [] and (run / "global_step1").is_dir()
    (run / "latest").write_text("global_step2")
    code, out, err = cli("prune", run, "--keep", "1")
    assert code == 0, err
    assert not (run / "global_step1").exists() and (run / "global_step2").is_dir()


def _hostile(path, canary):
    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {canary}",)

    torch.save({"optimizer_state_dict": {"zero_stage": Payload()}}, path)


@pytest.mark.parametrize("case, code, words", [
    ("missing rank file", 3, "no optimizer file for rank 1 of 2"),
    ("truncated file", 5, "not a whole torch zip file"),
    ("truncated partition", 5, "truncated or mismatched partition"),
    ("mismatched world size", 5, "must agree"),
    ("hostile pickle", 6, "system"),
])
def test_bad_input_is_one_line_and_its_exit_code(run, tmp_path, case, code, words):
    tag = run / "global_step2"
    canary = tmp_path / "canary"
    if case == "missing rank file":
        optim_file(tag, 1).unlink()
    elif case == "truncated file":
        data = optim_file(tag, 1).read_bytes()
        optim_file(tag, 1).write_bytes(data[: len(data) // 2])
    elif case == "truncated partition":
        state = torch.load(optim_file(tag, 1), weights_only=False)  # deepspeed is installed here: its classes load
        groups = state["optimizer_state_dict"]["single_partition_of_fp32_groups"]
        groups[0] = groups[0][:-100].clone()
        torch.save(state, optim_file(tag, 1))
    elif case == "mismatched world size":
        shutil.copy(optim_file(tag, 1), optim_file(tag, 2))
    else:
        _hostile(optim_file(tag, 1), canary)
    before = sorted((p, p.stat().st_mtime_ns) for p in run.rglob("*"))
    for command in (["inspect", run], ["convert", run, tmp_path / "out", "--to", "canonical"]):
        got, out, err = cli(*command)
        assert got == code and words in err, (command, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not canary.exists()
    assert sorted((p, p.stat().st_mtime_ns) for p in run.rglob("*")) == before


class TestDeepSpeedConformance(FormatConformance):
    format = "deepspeed"

    @pytest.fixture(autouse=True)
    def _runs(self, ds_runs):
        self.runs = ds_runs

    def make_example(self, tmp_path):
        dst = tmp_path / "run"
        dst.mkdir()
        shutil.copy(self.runs[RUN] / "latest", dst)
        shutil.copytree(self.runs[RUN] / "global_step2", dst / "global_step2")
        return dst
