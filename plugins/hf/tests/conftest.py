"""Fixtures: real model directories written by transformers (hf_reference.py)."""

from hf_reference import llama_dir, llama_model, qwen2_dir, qwen2_model, qwen3_dir, qwen3_model  # noqa: F401
