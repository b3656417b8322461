"""ZeRO checkpoints written by DeepSpeed's engine, read by ckpt-core, checked against
DeepSpeed's own ``zero_to_fp32.py`` and against what the engine held (both computed in
this test session, from the same files)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from ckpt_core import torchfile
from deepspeed_runs import RUNS, zero_to_fp32

import ckpt_core
from ckpt_core.compare import differences

CLI = [sys.executable, "-m", "ckpt_core"]
ZERO_TO_FP32 = [r for r in RUNS if not r.startswith(("bf16opt", "z0"))]  # it refuses these: no ZeRO partitions


def expected(run):
    return torch.load(run / "expected.pt", weights_only=True)


@pytest.mark.parametrize("name", ZERO_TO_FP32)
def test_fp32_weights_equal_zero_to_fp32(ds_runs, name):
    run = ds_runs[name]
    ck = ckpt_core.load(run)
    reference = zero_to_fp32(run)
    assert ckpt_core.detect(run)[0].format == "deepspeed"
    module = expected(run)["module"]
    dropped = {"frozen.weight", "frozen.bias"} if name.startswith("z1") else set()  # zero_to_fp32 loses ZeRO-1's frozen ones
    assert sorted(ck.names()) == sorted(set(reference) | dropped) and not dropped & set(reference)
    assert all(torch.equal(torchfile.to_torch(ck.tensors[n]), module[n]) for n in dropped)
    for n, t in reference.items():
        got = torchfile.to_torch(ck.tensor(n))
        assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got.view(torch.uint8), t.view(torch.uint8)), n
    assert ck.ties == {"head.weight": "embed.weight"}
    assert ck.layout.variant == f"zero{name[1]}"


@pytest.mark.parametrize("name", RUNS)
def test_master_weights_and_adam_moments_equal_the_engines(ds_runs, name):
    run = ds_runs[name]
    ck = ckpt_core.load(run)
    opt = ck.train_state.optimizer
    engine = expected(run)["params"]
    assert set(opt.param_state) == set(engine) == {n for n in ck.tensors if n not in ("scale", "frozen.weight", "frozen.bias")}
    assert ck.trainable == tuple(n for n in ck.tensors if n in engine)
    for n, held in engine.items():
        assert torch.equal(torchfile.to_torch(ck.tensors[n]), held["fp32"]), n
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(torchfile.to_torch(opt.param_state[n][key]), held[key]), (n, key)
        assert torchfile.to_torch(opt.param_state[n]["step"]).item() == 2
    frozen = ["frozen.weight", "frozen.bias"] if name.startswith("z0") else []  # without ZeRO torch's AdamW lists them
    assert opt.kind == "adamw" and [g["params"] for g in opt.groups] == [list(engine) + frozen]
    assert opt.groups[0]["lr"] == 0.0025 and opt.groups[0]["weight_decay"] == 0.1


@pytest.mark.parametrize("name", [r for r in RUNS if not r.startswith("z3")])
def test_module_weights_in_their_own_dtype(ds_runs, name):
    run = ds_runs[name]
    ck = ckpt_core.load(run, options={"weights": "module"})
    module = expected(run)["module"]
    assert list(ck.names()) == [n for n in module if n != "head.weight"] + ["head.weight"]
    for n, t in module.items():
        assert torch.equal(torchfile.to_torch(ck.tensor(n)), t), n
    assert ck.tensors["proj.weight"].dtype == {"fp32": "F32", "fp16": "F16"}.get(name.split("-")[1], "BF16")


def test_zero3_has_no_module_weights(ds_runs):
    name = next(r for r in RUNS if r.startswith("z3"))
    with pytest.raises(ckpt_core.UsageError, match="ZeRO-3 files hold no module weights"):
        ckpt_core.load(ds_runs[name], options={"weights": "module"})


def test_parameters_are_file_ranges_or_concatenations(ds_runs):
    """Nothing is read to build the checkpoint: a parameter in one rank's partition is that
    file's byte range; one straddling two ranks joins two ranges lazily."""
    ck = ckpt_core.load(ds_runs["z2-fp32-ws2"])
    ranges = {n: t.file_range for n, t in ck.tensors.items()}
    assert ranges["embed.weight"] is None  # 19565 elements: rank 0 holds 11994 of them
    embed = ck.tensors["embed.weight"]
    assert [p.file_range.path.name for p in embed.parts] == [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]
    assert b"".join(embed.iter_chunks(4096)) == embed.tobytes()  # streamed part by part, in order
    assert embed.file_ranges() == [p.file_range for p in embed.parts]  # what writers copy in the kernel
    assert all(r is not None and r.path.name.endswith("optim_states.pt") for n, r in ranges.items()
               if n in ("proj.weight", "proj.bias", "norm.weight", "norm.bias"))
    assert ranges["frozen.weight"].path.name == "mp_rank_00_model_states.pt"


def test_train_state(ds_runs):
    run = ds_runs["z3-bf16-ws2"]
    ts = ckpt_core.train_state(run)
    assert (ts.step, ts.epoch) == (2, None)
    assert ts.extra["tag"] == "global_step2" and ts.extra["world_size"] == 2 and ts.extra["zero_stage"] == 3
    assert (ts.extra["global_samples"], ts.extra["skipped_steps"], ts.extra["dp_world_size"]) == (8, 0, 2)
    assert ts.extra["client_state"] == {"epoch": 0, "note": "z3-bf16"}
    assert ts.scheduler["last_epoch"] == 2 and ts.scheduler["_last_lr"] == [0.0025]
    assert ts.config["bf16"] == {"enabled": True} and ts.config["zero_optimization"] == {"stage": 3}
    assert ts.optimizer.extra["loss_scaler"]["class"] == "LossScaler"
    scaler = ckpt_core.train_state(ds_runs["z2-fp16-ws2"]).optimizer.extra["loss_scaler"]
    assert (scaler["class"], scaler["dtype"], scaler["cur_iter"], scaler["dynamic"]) == ("DynamicLossScaler", "F16", 2, True)
    tag = ckpt_core.train_state(run / "global_step1")
    assert tag.step == 1 and tag.extra["tag"] == "global_step1"


@pytest.mark.parametrize("name", ["z2-fp32-ws2", "z3-bf16-ws2"])
def test_converts_to_canonical_and_safetensors(ds_runs, tmp_path, name):
    run = ds_runs[name]
    ck = ckpt_core.load(run)
    canonical = tmp_path / "canonical"
    done = subprocess.run([*CLI, "convert", str(run), str(canonical), "--to", "canonical"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    back = ckpt_core.load(canonical)
    assert differences(ck, back) == []
    assert ckpt_core.train_state(canonical).optimizer.param_state.keys() == ck.train_state.optimizer.param_state.keys()
    out = tmp_path / "model.safetensors"
    refused = subprocess.run([*CLI, "convert", str(run), str(out), "--to", "safetensors"], capture_output=True, text=True)
    assert refused.returncode == 7 and "train_state" in refused.stderr and not out.exists()
    done = subprocess.run([*CLI, "convert", str(run), str(out), "--to", "safetensors", "--allow-loss", "train_state"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    from safetensors.torch import load_file

    written, reference = load_file(out), zero_to_fp32(run)
    assert set(written) == set(reference) - {"head.weight"}
    assert all(torch.equal(written[n], reference[n]) for n in written)
    assert subprocess.run([*CLI, "diff", str(run), str(canonical)], capture_output=True).returncode == 0
