"""Fixtures: real model directories written by transformers (builders in hf_reference.py)."""

from __future__ import annotations

import pytest
from hf_reference import make_model, save_teacher


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
