"""The core's conformance suite, once per format, on files written as upstream writes them."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import strategies as st

from ckpt_core.errors import CorruptInput, UnsafeInput
from ckpt_core.plugins import registry
from ckpt_core.schema import FamilySchema, TensorRule
from ckpt_core.testing import FormatConformance, checkpoints_for

from ckpt_plugin_nanogpt.family import MODDED_GPT
from nanogpt_helpers import copy_to

torch = pytest.importorskip("torch")


def _holdable(layout: str) -> FamilySchema:
    """modded-gpt as a fused layout can hold it: every layer with attention, q/k/v/o of one
    shape for qkvo (H == C), no pre-2025-07 scalar tensors in qkvo."""
    rules = []
    for rule in MODDED_GPT.tensors:
        if ".attn." in rule.pattern and rule.pattern.endswith((".q.weight", ".k.weight", ".v.weight", ".o.weight")):
            shape = tuple("d_model" if d == "d_attn" else d for d in rule.shape) if layout == "qkvo" else rule.shape
            rule = TensorRule(rule.pattern, shape)
        elif layout == "qkvo" and rule.pattern in ("blocks.{i}.lambdas", "blocks.{i}.attn.lambdas", "skip_weights"):
            continue
        rules.append(rule)
    derive = {k: v for k, v in MODDED_GPT.derive.items() if layout != "qkvo" or k != "d_attn"}
    return FamilySchema(MODDED_GPT.name, MODDED_GPT.description, tuple(rules), derive)


def _one_dtype(format: str, family) -> st.SearchStrategy:
    """Checkpoints whose tensors share one dtype (a fused tensor has one)."""
    spec = registry().spec(format)
    return st.sampled_from(sorted(spec.dtypes)).flatmap(lambda d: checkpoints_for(spec, family, dtypes=[d]))


def _not_a_pickle(directory):
    path = directory / "ckpt.pt"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    return path


@dataclasses.dataclass
class Hook:
    """A class a pickle names: loading it would need this module's code."""

    x: int


def _needs_globals(directory):
    path = directory / "ckpt.pt"
    torch.save({"model": {"transformer.wte.weight": torch.zeros(2, 2)}, "hook": Hook(1)}, path)
    return path


class TestNanoGPT(FormatConformance):
    format = "nanogpt"
    families = ("gpt",)
    bad_inputs = [("not a pickle", _not_a_pickle, CorruptInput), ("needs globals", _needs_globals, UnsafeInput)]

    def make_example(self, tmp_path):
        return copy_to(self.files["nanogpt"], tmp_path)

    @pytest.fixture(autouse=True)
    def _files(self, upstream):
        self.files = upstream


class TestModdedNanoGPT(FormatConformance):
    format = "modded-nanogpt"

    def make_example(self, tmp_path):
        return copy_to(self.files["modded"], tmp_path)

    def checkpoint_strategy(self):
        return _one_dtype(self.format, _holdable("qkv"))

    @pytest.fixture(autouse=True)
    def _files(self, upstream):
        self.files = upstream


class TestModdedNanoGPTMedium(FormatConformance):
    format = "modded-nanogpt-medium"

    def make_example(self, tmp_path):
        return copy_to(self.files["medium"], tmp_path)

    def checkpoint_strategy(self):
        return _one_dtype(self.format, _holdable("qkvo"))

    @pytest.fixture(autouse=True)
    def _files(self, upstream):
        self.files = upstream
