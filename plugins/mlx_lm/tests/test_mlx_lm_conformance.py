"""The shared conformance suite on the ``mlx-lm`` format: its example is a quantized
directory ``mlx_lm.convert`` wrote; its bad inputs are damaged directories."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import ckpt_core
from ckpt_core import CorruptInput, NotFound, UnsafeInput
from ckpt_core.testing import FormatConformance, example_checkpoint


def _written(directory: Path) -> Path:
    """A small directory written by the plugin itself (a gpt checkpoint), with a tokenizer."""
    ck = example_checkpoint()
    ck = ck.evolve(train_state=None, extra={"hf": {"files": {"tokenizer.json": b'{"version": "1.0"}'}}})
    ckpt_core.save(ck, directory / "model", "mlx-lm", {"max_shard_size": "300B"})
    return directory / "model"


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _no_config(directory):
    model = _written(directory)
    (model / "config.json").unlink()
    return model


def _config_not_json(directory):
    model = _written(directory)
    (model / "config.json").write_text("{not json")
    return model


def _shard_out_of_the_directory(directory):
    model = _written(directory)
    _edit_json(model / "model.safetensors.index.json",
               lambda d: d["weight_map"].update({k: "../" + v for k, v in list(d["weight_map"].items())[:1]}))
    return model


def _missing_shard(directory):
    model = _written(directory)
    next(model.glob("model-00002-*.safetensors")).unlink()
    return model


def _stray_shard(directory):
    model = _written(directory)
    shutil.copy(next(model.glob("model-00001-*.safetensors")), model / "model-extra.safetensors")
    return model


def _no_weights(directory):
    model = _written(directory)
    for p in model.glob("model*"):
        p.unlink()
    return model


def _tokenizer_linked_out(directory):
    model = _written(directory)
    (directory / "secret").write_text("outside")
    (model / "tokenizer.json").unlink()
    os.symlink(directory / "secret", model / "tokenizer.json")
    return model


def _weights_linked_out(directory):
    model = _written(directory)
    (model / "model.safetensors.index.json").unlink()
    for p in model.glob("model-*.safetensors"):
        p.unlink()
    ckpt_core.save(example_checkpoint().evolve(train_state=None), directory / "elsewhere.safetensors", "safetensors")
    os.symlink(directory / "elsewhere.safetensors", model / "model.safetensors")
    return model


def _quantization_not_an_object(directory):
    model = _written(directory)
    _edit_json(model / "config.json", lambda d: d.update(quantization=4))
    return model


class TestMlxLmConformance(FormatConformance):
    format = "mlx-lm"
    bad_inputs = [
        ("no config.json", _no_config, NotFound),
        ("config.json not JSON", _config_not_json, CorruptInput),
        ("index names a shard out of the directory", _shard_out_of_the_directory, UnsafeInput),
        ("index names a missing shard", _missing_shard, NotFound),
        ("a weight file the index does not name", _stray_shard, CorruptInput),
        ("config.json and no weights", _no_weights, NotFound),
        ("a carried file linking out of the directory", _tokenizer_linked_out, UnsafeInput),
        ("a weight file linking out of the directory", _weights_linked_out, UnsafeInput),
        ("quantization that is not an object", _quantization_not_an_object, CorruptInput),
    ]

    @pytest.fixture(autouse=True)
    def _models(self, mlx_models):
        self.models = mlx_models

    def make_example(self, tmp_path: Path) -> Path:
        return Path(shutil.copytree(self.models["q4g32"], tmp_path / "model"))

    def checkpoint_strategy(self):
        """Models: adapters go to an adapters directory, alone (test_adapters.py)."""
        from ckpt_core.plugins import registry
        from ckpt_core.testing import checkpoints_for

        return checkpoints_for(registry().spec(self.format), adapters=False)
