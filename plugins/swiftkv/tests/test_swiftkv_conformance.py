"""The shared conformance suite on the ``swiftkv`` format, with a strategy that draws
students initialised from drawn teachers with a drawn variant A or B structure (a schema alone cannot say which layers have SwiftKV tensors)."""

from __future__ import annotations

import json
import random

import torch
from swiftkv_reference import deepspeed_dir, make_model, model_states, student_b

from ckpt_core import CorruptInput, UnsafeInput
from ckpt_core.plugins import registry
from ckpt_core.testing import FormatConformance
from ckpt_plugin_swiftkv.testing import students


# -- bad inputs ---------------------------------------------------------------------------


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
