"""Fixtures: real teacher directories written by transformers, SwiftKV students laid out as
ArcticTraining saves them (builders in swiftkv_reference.py)."""

from __future__ import annotations

import pytest
from swiftkv_reference import make_model, save_teacher, student_b


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
    """A Llama teacher in many shards (HF names), with a tokenizer file."""
    return save_teacher(llama_model, tmp_path / "llama", max_shard_size="20KB")


@pytest.fixture
def qwen3_dir(tmp_path, qwen3_model):
    """A Qwen3 teacher with tied embeddings in one model.safetensors."""
    return save_teacher(qwen3_model, tmp_path / "qwen3")


@pytest.fixture
def qwen2_dir(tmp_path, qwen2_model):
    return save_teacher(qwen2_model, tmp_path / "qwen2")


@pytest.fixture
def student_b_dir(tmp_path, llama_model):
    return student_b(tmp_path / "student-b", llama_model, {2: 1, 3: 1}, mlp=True)
