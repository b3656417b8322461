"""The core's conformance suite, once per format, on files written as upstream writes them."""

from __future__ import annotations

import dataclasses

import pytest
from nanogpt_helpers import copy_to

from ckpt_core.errors import CorruptInput, UnsafeInput
from ckpt_core.plugins import registry
from ckpt_core.testing import FormatConformance
from ckpt_plugin_nanogpt.testing import checkpoints

torch = pytest.importorskip("torch")


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
        return checkpoints(registry().spec(self.format), "modded-gpt")

    @pytest.fixture(autouse=True)
    def _files(self, upstream):
        self.files = upstream


class TestModdedNanoGPTMedium(FormatConformance):
    format = "modded-nanogpt-medium"

    def make_example(self, tmp_path):
        return copy_to(self.files["medium"], tmp_path)

    def checkpoint_strategy(self):
        return checkpoints(registry().spec(self.format), "modded-gpt")

    @pytest.fixture(autouse=True)
    def _files(self, upstream):
        self.files = upstream
