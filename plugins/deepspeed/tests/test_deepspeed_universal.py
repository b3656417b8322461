"""DeepSpeed's universal checkpoint (``zero/<param>/fp32.pt`` ...) written by ckpt-core from
a 2-rank ZeRO-2 run and by DeepSpeed's own ``ds_to_universal``: the engine loads both at
another world size and stage (``"load_universal": true``) and continues with the same
losses, bit for bit (``ds_to_universal``'s output loads only at the source's stage, ckpt-core's
at ZeRO-3 too); and ckpt-core reads ``ds_to_universal``'s output as the source."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from ckpt_core import torchfile
from deepspeed_runs import torchrun

import ckpt_core
from ckpt_core.compare import differences

SOURCE = "z2-fp32-ws2"
# world size -> (whose universal checkpoint, the config the fresh engine loads it with)
LOADS = {1: [("ours", "z2-fp32-universal"), ("theirs", "z2-fp32-universal")], 2: [("ours", "z3-fp32-universal")]}


@pytest.fixture(scope="session")
def universal(ds_runs, tmp_path_factory):
    """(ckpt-core's universal save dir, ds_to_universal's, {(who, world size): resumed result})."""
    out = tmp_path_factory.mktemp("deepspeed-universal")
    ours, theirs = out / "ours", out / "theirs"
    ckpt_core.convert(ds_runs[SOURCE], ours, "deepspeed", {"universal": True})
    done = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                           str(ds_runs[SOURCE] / "global_step2"), "--output_folder", str(theirs / "global_step2"),
                           "--inject_missing_state"], env={**os.environ, "DS_ACCELERATOR": "cpu"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = {}
    for ws, loads in LOADS.items():
        torchrun(ws, "resume", *[arg for who, config in loads for arg in (out / f"{who}-{ws}.pt", out / who, config)])
        for who, _ in loads:
            results[who, ws] = torch.load(out / f"{who}-{ws}.pt", weights_only=True)
    return ours, theirs, results


@pytest.mark.parametrize("ws", list(LOADS))
def test_engine_loads_ckpt_cores_universal_as_ds_to_universals(ds_runs, universal, ws):
    _, _, results = universal
    ours = results["ours", ws]
    assert ours["global_steps"] == 4
    if ("theirs", ws) in results:
        assert ours["losses"] == results["theirs", ws]["losses"]
    expected = torch.load(ds_runs[SOURCE] / "expected.pt", weights_only=True)["next_losses"]
    assert ours["losses"] == pytest.approx(expected, rel=1e-3)  # DeepSpeed's own universal path, across stages


def test_universal_layouts_read_as_the_source(ds_runs, universal):
    ours, theirs, _ = universal
    source = ckpt_core.load(ds_runs[SOURCE])
    assert sorted(p.name for p in ours.iterdir()) == ["global_step2", "latest", "latest_universal"]
    assert sorted(p.name for p in (ours / "global_step2").iterdir()) == [
        "mp_rank_00_model_states.pt", "zero", "zero_pp_rank_0_mp_rank_00_model_states.pt"]
    assert (ours / "global_step2" / "zero" / "embed.weight" / "exp_avg_sq.pt").is_file()
    for found in (ckpt_core.load(ours), ckpt_core.load(theirs / "global_step2")):
        assert found.layout.variant == "universal"
        assert differences(source.evolve(train_state=None), found.evolve(train_state=None)) == []
        a, b = source.train_state.optimizer, found.train_state.optimizer
        assert [g["params"] for g in a.groups] == [g["params"] for g in b.groups] and a.groups[0]["lr"] == b.groups[0]["lr"]
        assert all(torch.equal(torchfile.to_torch(a.param_state[n][k]), torchfile.to_torch(b.param_state[n][k]))
                   for n in a.param_state for k in ("exp_avg", "exp_avg_sq", "step"))
    back = ckpt_core.load(ours)
    assert back.train_state.step == 2 and back.train_state.extra["client_state"] == {"epoch": 0, "note": "z2-fp32"}
