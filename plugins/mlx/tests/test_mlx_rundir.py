"""Run directories: listing, latest complete checkpoint, best copies, pruning (API and CLI)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest

from ckpt_core import api
from ckpt_core.errors import CkptWarning, CorruptInput

CLI = [sys.executable, "-m", "ckpt_core"]


def cli(*args):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True)


def test_lists_every_step_and_tags_best(seed_run):
    fmt, entries = api.list_checkpoints(seed_run)
    assert fmt == "mlx"
    assert [(e.step, e.complete, sorted(e.tags)) for e in entries] == [(1, True, []), (2, True, ["best"]), (2, True, []), (3, True, [])]
    third = entries[-1]
    assert [p.name for p in third.paths] == ["step_000003.safetensors", "step_000003_state.json", "step_000003_optimizer.safetensors"]
    assert api.latest(seed_run).path == seed_run / "step_000003.safetensors"


def test_incomplete_checkpoints_are_never_latest(seed_run):
    (seed_run / "step_000003_state.json").unlink()  # a step file without its state JSON
    weights4 = seed_run / "step_000004.safetensors"  # a truncated step file with its state JSON
    weights4.write_bytes((seed_run / "step_000002.safetensors").read_bytes()[:-1])
    (seed_run / "step_000004_state.json").write_text(json.dumps({"step": 4, "epoch": 0, "metrics": {}}))
    (seed_run / "step_000005_state.json").write_text(json.dumps({"step": 5, "epoch": 0, "metrics": {}}))  # no weights
    _, entries = api.list_checkpoints(seed_run)
    incomplete = {e.step: e.note for e in entries if not e.complete}
    assert set(incomplete) == {3, 4, 5}
    assert "step_000003_state.json" in incomplete[3] and "data section" in incomplete[4] and "step_000005.safetensors: missing" in incomplete[5]
    assert all(str(seed_run) not in note for note in incomplete.values())
    assert api.latest(seed_run).path == seed_run / "step_000002.safetensors"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ck = api.load(seed_run)
    assert ck.train_state.step == 2
    assert any(issubclass(w.category, CkptWarning) and "step_000005" in str(w.message) for w in caught)
    shown = cli("inspect", seed_run)
    assert shown.returncode == 0 and shown.stderr.count("warning:") == 1
    assert cli("latest", seed_run).stdout.strip() == str(seed_run / "step_000002.safetensors")


def test_a_run_with_only_incomplete_checkpoints_is_corrupt(seed_run, tmp_path):
    for p in seed_run.glob("step_*_state.json"):
        p.unlink()
    (seed_run / "best" / "step_000002_state.json").unlink()
    with pytest.raises(CorruptInput, match="step_000003_state.json"):
        api.load(seed_run)
    assert cli("latest", seed_run).returncode == 3  # not found: no complete checkpoint


def test_prune_keeps_the_newest_and_the_best_and_leaves_incomplete_ones(seed_run):
    (seed_run / "step_000004.safetensors").write_bytes(b"partial")  # a save in progress
    before = sorted(p.name for p in seed_run.rglob("*"))
    dry = cli("prune", seed_run, "--keep", "1", "--dry-run")
    assert dry.returncode == 0 and "would delete 2 checkpoints" in dry.stdout
    assert sorted(p.name for p in seed_run.rglob("*")) == before
    done = cli("prune", seed_run, "--keep", "1")
    assert done.returncode == 0, done.stderr
    left = sorted(str(p.relative_to(seed_run)) for p in seed_run.rglob("*") if p.is_file())
    assert left == ["best/step_000002.safetensors", "best/step_000002_optimizer.safetensors", "best/step_000002_state.json",
                    "step_000003.safetensors", "step_000003_optimizer.safetensors", "step_000003_state.json",
                    "step_000004.safetensors"]
    assert cli("prune", seed_run, "--keep", "0").returncode == 2


def test_ls_json(seed_run):
    out = cli("--json", "ls", seed_run)
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout)
    assert facts["format"] == "mlx" and [c["step"] for c in facts["checkpoints"]] == [1, 2, 2, 3]


def test_a_bad_state_file_is_one_line_and_exit_code_5(seed_run):
    for p in seed_run.rglob("step_*_state.json"):
        p.write_text(json.dumps({"format_version": 2, "step": 1}))
    out = cli("inspect", seed_run)
    assert out.returncode == 5, out.stderr
    assert out.stderr.count("\n") == 1 and "format_version 2" in out.stderr and "Traceback" not in out.stderr
