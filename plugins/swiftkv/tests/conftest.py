"""Fixtures: real teacher directories written by transformers (the hf tests' references),
SwiftKV students laid out as ArcticTraining saves them (builders in swiftkv_reference.py)."""

from __future__ import annotations

import pytest
from swiftkv_reference import student_b
from hf_reference import llama_dir, llama_model, qwen2_dir, qwen2_model, qwen3_dir, qwen3_model  # noqa: F401


@pytest.fixture
def student_b_dir(tmp_path, llama_model):
    return student_b(tmp_path / "student-b", llama_model, {2: 1, 3: 1}, mlp=True)
