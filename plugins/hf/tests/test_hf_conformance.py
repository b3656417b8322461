"""The shared conformance suite on the ``hf`` format, with bad inputs of its own: a shard
name leaving the directory, a missing shard, a config without weights, a pickle that
needs code. Examples are real transformers directories (Qwen3 tied, sharded)."""

from __future__ import annotations

import json
import random

import torch
from hf_reference import make_model, save_bin, save_teacher

from ckpt_core import NotFound, UnsafeInput
from ckpt_core.plugins import registry
from ckpt_core.testing import FormatConformance
from ckpt_plugin_hf.testing import checkpoints


def _teacher(directory):
    return save_teacher(make_model("llama", num_hidden_layers=2), directory / "teacher", max_shard_size="20KB")


def _escaping_shard(directory):
    teacher = _teacher(directory)
    index = json.loads((teacher / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../" + index["weight_map"][first]
    (teacher / "model.safetensors.index.json").write_text(json.dumps(index))
    return teacher


def _missing_shard(directory):
    teacher = _teacher(directory)
    next(teacher.glob("model-00002-*.safetensors")).unlink()
    return teacher


def _no_weights(directory):
    teacher = _teacher(directory)
    for p in teacher.glob("model*"):
        p.unlink()
    return teacher


def _unsafe_bin(directory):
    teacher = save_bin(make_model("llama", num_hidden_layers=2), directory / "bin")
    torch.save({"model.embed_tokens.weight": torch.zeros(2), "trap": random.Random(0)}, teacher / "pytorch_model.bin")
    return teacher


class TestHfConformance(FormatConformance):
    format = "hf"
    bad_inputs = [
        ("shard name leaving the directory", _escaping_shard, UnsafeInput),
        ("shard missing", _missing_shard, NotFound),
        ("config.json and no weights", _no_weights, NotFound),
        ("pickle that needs code", _unsafe_bin, UnsafeInput),
    ]

    def make_example(self, tmp_path):
        return save_teacher(make_model("qwen3", num_hidden_layers=2, tie_word_embeddings=True), tmp_path / "qwen3",
                            max_shard_size="20KB")

    def checkpoint_strategy(self):
        return checkpoints(registry().spec("hf"))
