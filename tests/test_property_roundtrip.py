"""Property tests: canonical checkpoints go to disk and come back bit for bit.

Canonical holds everything (every dtype, 0-d and empty tensors, ties, adapters, train state,
KV sharing, extra); safetensors holds what its spec declares. The strategies themselves
are checked to draw only what a spec can hold.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ckpt_core
from ckpt_core import Arch, Checkpoint, FormatSpec, Tensor, dtypes, losses, schema, tree
from ckpt_core.compare import differences, tree_differences
from ckpt_core.plugins import registry
from ckpt_core.testing import SETTINGS, checkpoints, checkpoints_for, tensors, trees

FAMILIES = ("generic", "gpt")
EVERYTHING = {"adapters": True, "ties": True, "train_state": True, "optimizer": True,
              "kv_sharing": True, "trainable": True, "extra": True}


SHARDING = [{}, {"max_shard_size": 64}]  # one shard; many (tensor order must survive the index)


def assert_roundtrip(ck: Checkpoint, format: str, name: str, options: dict | None = None) -> None:
    with tempfile.TemporaryDirectory() as directory:
        dst = Path(directory) / name
        ckpt_core.save(ck, dst, format, options)
        assert differences(ck, ckpt_core.load(dst, format)) == []


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("features", [EVERYTHING, {}], ids=["everything", "sometimes"])
@pytest.mark.parametrize("options", SHARDING, ids=["one-shard", "sharded"])
@SETTINGS
@given(data=st.data())
def test_canonical_roundtrip(family, features, options, data):
    assert_roundtrip(data.draw(checkpoints(family=family, **features)), "canonical", "ckpt", options)


@SETTINGS
@given(st.tuples(*(tensors(dtype=d) for d in dtypes.DTYPES)))
def test_every_dtype_and_shape_roundtrips(drawn):
    ck = Checkpoint(tensors={f"t.{d.lower()}": t for d, t in zip(dtypes.DTYPES, drawn)})
    assert_roundtrip(ck, "canonical", "ckpt")
    assert_roundtrip(ck, "safetensors", "model.safetensors")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name, options", [("model.safetensors", {}), ("model", {}), ("model", SHARDING[1])],
                         ids=["file", "directory", "sharded"])
@SETTINGS
@given(data=st.data())
def test_safetensors_roundtrip(family, name, options, data):
    ck = data.draw(checkpoints_for(registry().spec("safetensors"), family))
    assert_roundtrip(ck, "safetensors", name, options)


@SETTINGS
@given(trees(tensors()))
def test_tree_encoding_roundtrips(value):
    encoded, stored = tree.encode({"root": value})
    decoded = tree.decode(json.loads(json.dumps(encoded)), stored)
    assert tree_differences({"root": value}, decoded, "tree") == []


NARROW = FormatSpec("narrow", "only gpt, two dtypes, ties", families=("gpt",),
                    capabilities={"ties"}, dtypes={"BF16", "F32"})


@pytest.mark.parametrize("spec_name", ["canonical", "safetensors", "narrow"])
@SETTINGS
@given(data=st.data())
def test_checkpoints_for_draws_only_what_the_spec_holds(spec_name, data):
    spec = NARROW if spec_name == "narrow" else registry().spec(spec_name)
    ck = data.draw(checkpoints_for(spec))
    assert losses.find(ck, spec) == []
    if ck.arch.family != "generic":
        schema.check(registry().families[ck.arch.family], ck)


def test_tensors_in_hyper_parameters_roundtrip_through_canonical(ckpt_example_checkpoint, tmp_path):
    ck = ckpt_example_checkpoint
    inv_freq = Tensor.from_bytes(bytes(range(8)), "F32", (2,))
    ck = ck.evolve(arch=Arch(ck.arch.family, {**ck.arch.params, "inv_freq": inv_freq}))
    assert_roundtrip(ck, "canonical", "ckpt")
