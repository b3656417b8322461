"""Reading DCP checkpoints that torch.distributed wrote: bit for bit against the full
tensors the run itself gathered, optimizer state by name, no torch import, conversions
to safetensors, canonical and hf (loaded by transformers with identical logits)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import ckpt_core
from ckpt_core import torchfile

torch = pytest.importorskip("torch")

VARIANTS = ["fsdp2", "dtensor", "single"]


def full(run, name):
    return torch.load(run / f"{name}.full.pt", weights_only=True)


def same(a, b) -> bool:
    """Same dtype, shape and bytes."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


@pytest.mark.parametrize("name", VARIANTS)
def test_model_tensors_are_the_gathered_ones(dcp_run, name):
    ck = ckpt_core.load(dcp_run / name)
    expected = full(dcp_run, name)["model"]
    assert list(ck.tensors) == list(expected)
    wrong = [k for k, t in expected.items() if not same(torchfile.to_torch(ck.tensors[k]), t)]
    assert not wrong
    assert ck.layout.variant == ("prefixed" if name == "fsdp2" else "flat")


@pytest.mark.parametrize("name", ["hf-shards", "hf-consolidated"])
def test_hf_storage_writer_shards_are_the_gathered_tensors(dcp_run, name):
    """The safetensors variant: each rank's shard, placed by DCP_SHARDING_INFO."""
    found = ckpt_core.detect(dcp_run / name)[0]
    assert found.format == "dcp"
    ck = ckpt_core.load(dcp_run / name)
    expected = full(dcp_run, "fsdp2")["model"]
    assert set(ck.tensors) == set(expected) and ck.arch.family == "llama" and ck.train_state is None
    assert all(same(torchfile.to_torch(ck.tensors[k]), t) for k, t in expected.items())


def test_fsdp2_is_llama_with_adamw_state_by_name(dcp_run):
    ck = ckpt_core.load(dcp_run / "fsdp2")
    expected = full(dcp_run, "fsdp2")
    config = json.loads((dcp_run / "config.json").read_text())
    assert ck.arch.family == "llama"
    assert ck.arch.params["vocab_size"] == config["vocab_size"] == 301
    opt = ck.train_state.optimizer
    assert opt.kind == "adamw" and opt.resumable
    assert set(opt.param_state) == set(expected["optim"]["state"]) == set(ck.tensors)
    for fqn, slots in expected["optim"]["state"].items():
        assert set(opt.param_state[fqn]) == {"exp_avg", "exp_avg_sq", "step"}
        assert all(same(torchfile.to_torch(opt.param_state[fqn][s]), v) for s, v in slots.items()), fqn
    assert opt.groups == expected["optim"]["param_groups"]  # lr, betas, ..., params by name
    state = ck.train_state.extra["train_state"]
    assert state["step"] == 1 and same(torchfile.to_torch(state["tokens_seen"]), expected["train_state"]["tokens_seen"])


def test_train_state_hook_agrees_with_a_full_read(dcp_run):
    from ckpt_core.compare import tree_differences

    hook = ckpt_core.train_state(dcp_run / "fsdp2")
    assert tree_differences(hook.to_dict(), ckpt_core.load(dcp_run / "fsdp2").train_state.to_dict(), "train_state") == []
    assert ckpt_core.train_state(dcp_run / "dtensor") is None


def test_reading_imports_no_torch_and_runs_nothing(dcp_run):
    code = ("import sys, ckpt_core\n"
            f"ck = ckpt_core.load({str(dcp_run / 'fsdp2')!r})\n"
            "for t in ck.tensors.values(): t.tobytes()\n"
            "for s in ck.train_state.optimizer.param_state.values(): [t.tobytes() for t in s.values()]\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_dim0_chunks_stay_file_ranges(dcp_run):
    """A single-chunk tensor is its item's data record, read in place."""
    ck = ckpt_core.load(dcp_run / "single")
    assert all(t.file_range is not None and t.file_range.path.suffix == ".distcp" for t in ck.tensors.values())


def test_converts_to_safetensors_and_canonical_exactly(dcp_run, tmp_path):
    src = dcp_run / "fsdp2"
    ckpt_core.convert(src, tmp_path / "canon", "canonical")
    assert ckpt_core.diff(src, tmp_path / "canon").identical
    from ckpt_core.compare import tree_differences

    back = ckpt_core.load(tmp_path / "canon")
    assert tree_differences(back.train_state.to_dict(), ckpt_core.load(src).train_state.to_dict(), "train_state") == []
    with pytest.raises(ckpt_core.LossyConversion, match="--allow-loss"):
        ckpt_core.convert(src, tmp_path / "model.safetensors", "safetensors")
    assert not (tmp_path / "model.safetensors").exists()
    ckpt_core.convert(src, tmp_path / "model.safetensors", "safetensors", allow_loss=["train_state"])
    assert ckpt_core.diff(src, tmp_path / "model.safetensors").identical
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "model.safetensors")
    assert all(same(weights[k], t) for k, t in full(dcp_run, "fsdp2")["model"].items())


@pytest.mark.parametrize("name", ["fsdp2", "single"])
def test_hf_output_gives_the_same_logits_in_transformers(dcp_run, tmp_path, name):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_json_file(dcp_run / "config.json")
    heads = {"n_head": config.num_attention_heads, "n_kv_head": config.num_key_value_heads}
    ckpt_core.convert(dcp_run / name, tmp_path / "hf", "hf", {"params": heads}, allow_loss=["train_state"])
    reference = LlamaForCausalLM(config).eval()
    reference.load_state_dict(full(dcp_run, name)["model"], strict=True)
    loaded = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.arange(30).reshape(2, 15) * 11 % config.vocab_size
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, reference(ids).logits)
