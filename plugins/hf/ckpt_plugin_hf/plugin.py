"""The ckpt-core hooks of ckpt-plugin-hf: the ``hf`` format and the ``llama``, ``qwen2``
and ``qwen3`` families (GPT-2 is the core's ``gpt`` family)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ckpt_core import CkptError, Detection, FormatSpec, hookimpl

from . import directory, hfdir
from .families import DECODERS, MODEL_TYPES, family_of_model_type, schema

HF = directory.HF
SHARD_OPTION = "largest shard when writing, as 5GB (decimal, HF's way) or 4GiB; default 5GB"

SPEC = FormatSpec(
    name=HF,
    description="a Hugging Face transformers model directory (GPT-2, Llama, Mistral, Qwen2, Qwen3) with its tokenizer files",
    families=("gpt", *DECODERS),
    capabilities=frozenset({"ties"}),
    patterns=("config.json", "model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
              "pytorch_model.bin", "pytorch_model.bin.index.json"),
    options={"max_shard_size": SHARD_OPTION},
)


@hookimpl
def ckpt_formats():
    return [SPEC]


@hookimpl
def ckpt_families():
    return [schema(f) for f in DECODERS]


@hookimpl
def detect(path: Path):
    try:
        if path.is_dir() and (path / hfdir.CONFIG).is_file():
            return _detect(path)
    except (CkptError, OSError, ValueError):
        pass
    return None


def _detect(path: Path) -> Detection | None:
    try:
        config = hfdir.read_config(path)
    except CkptError as e:
        if hfdir.weights(path) is None:
            return None
        return Detection(HF, 0.3, f"model weights beside an unreadable config.json ({e})", path)
    model_type = config.get("model_type")
    if family_of_model_type(model_type) is None:
        return None
    if hfdir.weights(path) is None:
        return Detection(HF, 0.05, f"config.json ({model_type}) but no weight files: not a checkpoint", path)
    return Detection(HF, 0.9, f"Hugging Face {MODEL_TYPES[model_type][1]} directory (model_type {model_type})", path)


@hookimpl
def to_canonical(path: Path, format: str, options: dict[str, Any]):
    if format != HF:
        return None
    return directory.read(path)


@hookimpl
def from_canonical(checkpoint, path: Path, format: str, options: dict[str, Any]):
    if format != HF:
        return None
    return directory.save(checkpoint, path, options)
