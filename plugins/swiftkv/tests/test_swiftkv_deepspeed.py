"""DeepSpeed resume state (model-states pickles with RNG states, read through an
allow-list) and HF-engine run directories."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from swiftkv_reference import deepspeed_dir, model_states, save_teacher

import ckpt_core
from ckpt_core import UnsafeInput, torchfile
from ckpt_core.compare import differences

CLI = [sys.executable, "-m", "ckpt_core"]


def _student_module(model):
    """The module state dict a variant A (nkv=2) SwiftKV model holds in training."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["model.norm_swiftkv.weight"] = state["model.layers.2.input_layernorm.weight"].clone()
    for i in (2, 3):
        p = f"model.layers.{i}.self_attn."
        for part in ("q_proj", "k_proj", "v_proj"):
            state[p + f"{part}_swiftkv.weight"] = state[p + f"{part}.weight"].clone()
    return state


@pytest.fixture
def ds_dir(tmp_path, llama_model):
    return deepspeed_dir(tmp_path / "output", _student_module(llama_model))


def test_train_state_from_the_latest_tag(ds_dir):
    assert ckpt_core.detect(ds_dir)[0].format == "swiftkv"
    ts = ckpt_core.train_state(ds_dir)
    expected = model_states(None)
    assert (ts.step, ts.epoch) == (40, 1)
    assert ts.extra["tag"] == "epoch_1_global_step_40" and ts.extra["zero_stage"] == 2
    assert (ts.extra["dp_world_size"], ts.extra["mp_world_size"], ts.extra["global_samples"]) == (2, 1, 320)
    assert ts.extra["optimizer_present"] and ts.extra["scheduler_present"]
    assert ts.optimizer.extra["files"] == [f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(2)]
    assert ts.scheduler == expected["lr_scheduler"] and ts.config == expected["ds_config"]
    assert torch.equal(torchfile.to_torch(ts.rng["torch"]), expected["torch_random_state"])
    kind, keys, pos, has_gauss, cached = ts.rng["numpy"]
    np_state = expected["np_random_state"]
    assert kind == "MT19937" and np.array_equal(keys.numpy(), np_state[1]) and (pos, has_gauss, cached) == np_state[2:]
    assert ts.rng["python"] == expected["python_random_state"]
    random.setstate(ts.rng["python"])  # usable as it is


def test_tag_folder_and_cli(ds_dir, llama_model):
    llama_model.config.save_pretrained(ds_dir)  # some output directories hold the model config too
    tag = ds_dir / "epoch_1_global_step_40"
    assert ckpt_core.train_state(tag).step == 40
    done = subprocess.run([*CLI, "inspect", str(ds_dir), "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    assert facts["train_state"]["step"] == 40 and facts["kv_sharing"] == {} and facts["trainable"] == 7


def test_module_weights_convert_to_a_student(tmp_path, ds_dir, llama_model):
    ck = ckpt_core.load(ds_dir)
    module = _student_module(llama_model)
    assert set(ck.tensors) == set(module)
    assert all(torch.equal(torchfile.to_torch(ck.tensors[n]), t) for n, t in module.items())
    assert ck.arch.params["num_key_value_layers"] == 2 and ck.arch.params["key_value_group_size"] == 1
    out = tmp_path / "student"
    with pytest.raises(ckpt_core.LossyConversion, match="training state"):
        ckpt_core.convert(ds_dir, out, "swiftkv")
    ckpt_core.convert(ds_dir, out, "swiftkv", allow_loss=["train_state"])
    student = ckpt_core.load(out)
    assert differences(ck.evolve(train_state=None), student) == []


def test_variant_b_state_takes_its_map_from_the_option(tmp_path, llama_model):
    module = {k: v.clone() for k, v in llama_model.state_dict().items()}
    module["model.layers.3.self_attn.q_proj_swiftkv.weight"] = module["model.layers.3.self_attn.q_proj.weight"].clone()
    directory = deepspeed_dir(tmp_path / "output", module, tag="global_step7", step=7)
    assert ckpt_core.load(directory).kv_sharing == {}
    ck = ckpt_core.load(directory, options={"kv_sharing_map": {3: 2}})
    assert ck.kv_sharing == {3: 2}
    with pytest.raises(ckpt_core.CorruptInput, match="lacks model.layers.2"):
        ckpt_core.load(directory, options={"kv_sharing_map": {3: 2, 2: 1}})
    out = tmp_path / "student"
    ckpt_core.convert(directory, out, "swiftkv", {"kv_sharing_map": {3: 2}}, allow_loss=["train_state"])
    assert json.loads((out / "config.json").read_text())["kv_sharing_map"] == {"3": 2}


def test_other_globals_are_refused_by_name(tmp_path):
    directory = deepspeed_dir(tmp_path / "output", None, extra_object=random.Random(1))
    with pytest.raises(UnsafeInput, match=r"random\.Random") as caught:
        ckpt_core.train_state(directory)
    assert "numpy" not in str(caught.value)  # the allowed globals are not named as the problem


def test_zero3_state_without_module_weights(tmp_path):
    directory = tmp_path / "output"
    folder = directory / "global_step5"
    folder.mkdir(parents=True)
    torch.save(model_states({}, step=5, ds_config={"zero_optimization": {"stage": 3}}),
               folder / "zero_pp_rank_0_mp_rank_00_model_states.pt")
    (directory / "latest").write_text("global_step5")
    ts = ckpt_core.train_state(directory)
    assert (ts.step, ts.epoch, ts.extra["zero_stage"], ts.optimizer) == (5, None, 3, None)
    with pytest.raises(ckpt_core.NotFound, match="ZeRO-3"):
        ckpt_core.load(directory)


def test_latest_naming_a_missing_tag_is_not_found(ds_dir):
    (ds_dir / "latest").write_text("epoch_9_global_step_900")
    with pytest.raises(ckpt_core.NotFound, match="epoch_9_global_step_900"):
        ckpt_core.load(ds_dir, "swiftkv")


def test_hf_engine_run_directory(tmp_path, llama_model):
    run = tmp_path / "run"
    run.mkdir()
    for step in (100, 200, 300):
        save_teacher(llama_model, run / f"global_step_{step}", max_shard_size="60KB")
    broken = next((run / "global_step_300").glob("model-00002-*.safetensors"))
    broken.write_bytes(broken.read_bytes()[:100])  # an interrupted save
    fmt, entries = ckpt_core.list_checkpoints(run)
    assert fmt == "swiftkv" and [(e.step, e.complete) for e in entries] == [(100, True), (200, True), (300, False)]
    assert ckpt_core.latest(run).path == run / "global_step_200"
    done = subprocess.run([*CLI, "latest", str(run)], capture_output=True, text=True)
    assert done.returncode == 0 and "global_step_200" in done.stdout


def test_deepspeed_run_lists_tags(ds_dir):
    older = ds_dir / "epoch_0_global_step_20"
    older.mkdir()
    torch.save(model_states(None, step=20), older / "mp_rank_00_model_states.pt")
    _, entries = ckpt_core.list_checkpoints(ds_dir)
    assert [(e.step, e.complete) for e in entries] == [(20, True), (40, True)]
    assert "latest" in entries[-1].tags and not entries[0].tags
