"""The shared conformance suite on both formats, with strategies that draw what each holds:
teachers for ``hf``; for ``swiftkv``, students initialised from drawn teachers with a drawn
variant A or B structure (a schema alone cannot say which layers have SwiftKV tensors)."""

from __future__ import annotations

import json
import random

import torch
from swiftkv_reference import deepspeed_dir, make_model, model_states, save_bin, save_teacher, student_b

from ckpt_core import CorruptInput, NotFound, UnsafeInput
from ckpt_core.plugins import registry
from ckpt_core.testing import FormatConformance
from ckpt_plugin_swiftkv.testing import students, teachers


# -- bad inputs ---------------------------------------------------------------------------


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


def _student(directory):
    return student_b(directory / "student", make_model("llama", num_hidden_layers=3), {2: 1})


def _string_map_key(directory):
    student = _student(directory)
    config = json.loads((student / "config.json").read_text())
    config["kv_sharing_map"] = {"two": 1}
    (student / "config.json").write_text(json.dumps(config))
    return student


def _map_without_tensors(directory):
    student = _student(directory)
    config = json.loads((student / "config.json").read_text())
    config["kv_sharing_map"] = {"1": 0, "2": 1}
    (student / "config.json").write_text(json.dumps(config))
    return student


def _latest_out_of_the_directory(directory):
    output = deepspeed_dir(directory / "output", None)
    (output / "latest").write_text("../elsewhere")
    return output


def _unsafe_model_states(directory):
    output = deepspeed_dir(directory / "output", None)
    torch.save(model_states(None, trap=random.Random(0)), output / "epoch_1_global_step_40" / "mp_rank_00_model_states.pt")
    return output


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
        return teachers(registry().spec("hf"))


class TestSwiftkvConformance(FormatConformance):
    format = "swiftkv"
    bad_inputs = [
        ("kv_sharing_map key that is no layer", _string_map_key, CorruptInput),
        ("map naming layers without SwiftKV tensors", _map_without_tensors, CorruptInput),
        ("latest naming a folder outside", _latest_out_of_the_directory, UnsafeInput),
        ("model states that need code", _unsafe_model_states, UnsafeInput),
    ]

    def make_example(self, tmp_path):
        return _student(tmp_path)

    def checkpoint_strategy(self):
        return students(registry().spec("swiftkv"))
