"""The shared conformance suite on both formats, with strategies that draw what each holds:
teachers for ``hf``; for ``swiftkv``, students initialised from drawn teachers with a drawn
variant A or B structure (a schema alone cannot say which layers have SwiftKV tensors)."""

from __future__ import annotations

import json
import random
import warnings

import torch
from hypothesis import assume
from hypothesis import strategies as st
from swiftkv_reference import deepspeed_dir, make_model, model_states, save_bin, save_teacher, student_b

from ckpt_core import CorruptInput, NotFound, UnsafeInput
from ckpt_core.plugins import registry
from ckpt_core.testing import FormatConformance, checkpoints_for
from ckpt_plugin_swiftkv.config import ordered
from ckpt_plugin_swiftkv.families import TEACHERS
from ckpt_plugin_swiftkv.swiftkv import AVERAGED, Plan, init_student


def teachers(fmt: str):
    spec = registry().spec(fmt)
    drawn = st.one_of([checkpoints_for(spec, schema, kv_sharing=False, trainable=False) for schema in TEACHERS.values()])
    return drawn.map(lambda ck: ck.evolve(arch=ck.arch.__class__(ck.arch.family, ordered(ck.arch.params))))


@st.composite
def students(draw):
    ck = draw(teachers("swiftkv"))
    n_layer = ck.arch.params["n_layer"]
    assume(n_layer >= 2)
    if draw(st.booleans()):
        nkv = draw(st.integers(1, n_layer - 1))
        averagable = all(t.dtype in AVERAGED for n, t in ck.tensors.items() if "_proj." in n or "k_norm" in n)
        sizes = [g for g in range(1, n_layer - nkv + 1) if (n_layer - nkv) % g == 0 and (g == 1 or averagable)]
        plan = Plan("A", n_layer, nkv, draw(st.sampled_from(sizes)))
    else:
        consumers = draw(st.lists(st.integers(1, n_layer - 1), min_size=1, unique=True))
        kv_map = {c: draw(st.integers(0, c - 1)) for c in consumers}
        plan = Plan("B", n_layer, kv_map=kv_map, mlp=draw(st.booleans()), layernorm=draw(st.booleans()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student = init_student(ck, plan)
    return student.evolve(arch=student.arch.__class__(student.arch.family, ordered(student.arch.params)))


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
        return teachers("hf")


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
        return students()
