"""Reference layouts for the hf tests: tiny transformers models of each family, saved as
transformers saves them (``save_pretrained``), or as transformers 4 wrote pickles; and the
fixtures of such directories (conftest.py here and in the swiftkv tests import them)."""

from __future__ import annotations

import json

import pytest
import torch

TOKENIZER = b'{"version": "1.0", "model": {"type": "BPE"}}\n'
SIZES = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8)


def make_model(family: str, **overrides):
    """A tiny randomly initialised transformers model of ``family``."""
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    configs = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}
    config = configs[family](**{**SIZES, **overrides})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # norms start at 1: make them distinct so copies are checkable
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model.eval()


def save_teacher(model, directory, **kwargs):
    model.save_pretrained(directory, **kwargs)
    (directory / "tokenizer.json").write_bytes(TOKENIZER)
    return directory


def save_bin(model, directory, shards: int = 1):
    """``pytorch_model.bin`` (or shards with their index) as transformers 4 wrote them:
    transformers 5 writes safetensors even with ``safe_serialization=False``."""
    directory.mkdir()
    model.config.save_pretrained(directory)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight")
    if shards == 1:
        torch.save(state, directory / "pytorch_model.bin")
        return directory
    names = list(state)
    weight_map = {}
    for k in range(shards):
        file = f"pytorch_model-{k + 1:05d}-of-{shards:05d}.bin"
        part = names[k::shards]
        torch.save({n: state[n] for n in part}, directory / file)
        weight_map.update(dict.fromkeys(part, file))
    index = {"metadata": {"total_size": 0}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    return directory


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def llama_model():
    return make_model("llama")


@pytest.fixture(scope="session")
def qwen3_model():
    return make_model("qwen3", tie_word_embeddings=True)


@pytest.fixture(scope="session")
def qwen2_model():
    return make_model("qwen2", num_hidden_layers=3)


@pytest.fixture
def llama_dir(tmp_path, llama_model):
    """A Llama in many shards (HF names), with a tokenizer file."""
    return save_teacher(llama_model, tmp_path / "llama", max_shard_size="20KB")


@pytest.fixture
def qwen3_dir(tmp_path, qwen3_model):
    """A Qwen3 with tied embeddings in one model.safetensors."""
    return save_teacher(qwen3_model, tmp_path / "qwen3")


@pytest.fixture
def qwen2_dir(tmp_path, qwen2_model):
    return save_teacher(qwen2_model, tmp_path / "qwen2")
