"""What the built-in formats claim, and what they leave alone."""

import numpy as np
import pytest
from safetensors.numpy import save_file

import ckpt_core
from ckpt_core import safetensors_io
from ckpt_core.errors import NotFound
from ckpt_core.tensor import Tensor


@pytest.fixture(autouse=True)
def builtins_only(ckpt_plugins_only):
    ckpt_plugins_only()


def formats(path):
    return [(d.format, d.confidence) for d in ckpt_core.detect(path)]


def weights():
    return {"w": np.ones((2, 2), np.float32)}


def test_a_file_and_a_directory_of_one_file_are_safetensors(tmp_path):
    save_file(weights(), str(tmp_path / "m.safetensors"))
    assert formats(tmp_path / "m.safetensors") == [("safetensors", 0.5)]
    assert formats(tmp_path) == [("safetensors", 0.4)]


def test_a_config_json_lowers_the_claim_for_family_plugins(tmp_path):
    save_file(weights(), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text("{}")
    assert formats(tmp_path) == [("safetensors", 0.2)]


def test_shards_without_an_index_are_not_claimed_and_say_why_when_forced(tmp_path):
    save_file(weights(), str(tmp_path / "a.safetensors"))
    save_file(weights(), str(tmp_path / "b.safetensors"))
    assert formats(tmp_path) == []
    with pytest.raises(NotFound, match="no .*index.json"):
        ckpt_core.load(tmp_path, "safetensors")


def test_an_indexed_directory_is_claimed(tmp_path):
    tensors = {f"t{i}": Tensor.from_numpy(np.full(100, i, np.float32)) for i in range(3)}
    safetensors_io.write_sharded(tmp_path, tensors, 500)
    assert formats(tmp_path) == [("safetensors", 0.4)]
    assert list(ckpt_core.load(tmp_path).tensors) == ["t0", "t1", "t2"]


def test_a_canonical_directory_is_canonical_first(tmp_path):
    ck = ckpt_core.load(_file(tmp_path))
    ckpt_core.save(ck, tmp_path / "canon", "canonical")
    assert formats(tmp_path / "canon")[0] == ("canonical", 1.0)


def test_junk_is_not_claimed_unless_named_safetensors(tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"\x00" * 64)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    assert formats(tmp_path / "junk.bin") == []
    assert formats(tmp_path / "junk.safetensors") == [("safetensors", 0.1)]


def _file(tmp_path):
    save_file(weights(), str(tmp_path / "m.safetensors"))
    return tmp_path / "m.safetensors"
