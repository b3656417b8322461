"""The conformance suite on the built-in formats: canonical, and safetensors as a file and
as a sharded directory written by the ``safetensors`` library itself."""

from __future__ import annotations

import json
import struct

import numpy as np
from safetensors.numpy import save_file

import ckpt_core
from ckpt_core import Adapter, OptimizerState, Tensor, TrainState, UnsafeInput
from ckpt_core.testing import FormatConformance, example_checkpoint


def _gpt_arrays() -> dict[str, np.ndarray]:
    """gpt-named arrays as a plain PyTorch export has them (lm_head stored, not tied)."""
    rng = np.random.default_rng(1)
    h = "transformer.h.0."
    shapes = {"transformer.wte.weight": (8, 4), h + "ln_1.weight": (4,), h + "attn.c_attn.weight": (12, 4),
              h + "attn.c_proj.weight": (4, 4), h + "ln_2.weight": (4,), h + "mlp.c_fc.weight": (16, 4),
              h + "mlp.c_proj.weight": (4, 16), "transformer.ln_f.weight": (4,), "lm_head.weight": (8, 4)}
    arrays = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    arrays[h + "attn.c_attn.weight"] = arrays[h + "attn.c_attn.weight"].astype(np.float16)
    return arrays


def _raw_safetensors(path, header: dict, data: bytes = b"") -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _canonical_with(directory, change):
    """A canonical example whose manifest ``change`` edits in place."""
    ckpt_core.save(example_checkpoint(), directory / "ckpt", "canonical")
    manifest = directory / "ckpt" / "manifest.json"
    m = json.loads(manifest.read_text())
    change(m)
    manifest.write_text(json.dumps(m))
    return directory / "ckpt"


def _escaping_shard(directory):
    return _canonical_with(directory, lambda m: next(iter(m["tensors"].values())).update(file="../model.safetensors"))


def _bad_version(directory):
    return _canonical_with(directory, lambda m: m.update(version=99))


def _unknown_dtype(directory):
    _raw_safetensors(directory / "m.safetensors", {"w": {"dtype": "F7", "shape": [1], "data_offsets": [0, 1]}}, b"\0")
    return directory / "m.safetensors"


def _overlapping(directory):
    _raw_safetensors(directory / "m.safetensors", {"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                                                   "b": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]}}, b"\0" * 3)
    return directory / "m.safetensors"


class TestCanonical(FormatConformance):
    format = "canonical"

    def make_example(self, tmp_path):
        ck = example_checkpoint()
        base = "transformer.h.0.attn.c_proj.weight"
        adapter = Adapter(Tensor.from_numpy(np.ones((2, 4), np.float32)), Tensor.from_numpy(np.zeros((4, 2), np.float32)), 16.0)
        state = TrainState(step=100, best_metric=Tensor.from_numpy(np.float32(2.5)), config={"lr": 1e-3, "betas": (0.9, 0.95)},
                           optimizer=OptimizerState("adamw", {base: {"exp_avg": ck.tensors[base], "step": 100}},
                                                    [{"lr": 1e-3, "params": [base]}]))
        ck = ck.evolve(adapters={base: adapter}, train_state=state, extra={"nanogpt": {"iter_num": 100}})
        ckpt_core.save(ck, tmp_path / "ckpt", "canonical")
        return tmp_path / "ckpt"

    bad_inputs = [("shard name escaping the directory", _escaping_shard, UnsafeInput),
                  ("unknown manifest version", _bad_version, ckpt_core.CorruptInput),
                  ("extra that is not a mapping", lambda d: _canonical_with(d, lambda m: m.update(extra=True)),
                   ckpt_core.CorruptInput)]


class TestSafetensorsFile(FormatConformance):
    format = "safetensors"

    def make_example(self, tmp_path):
        save_file(_gpt_arrays(), tmp_path / "model.safetensors", metadata={"format": "pt"})
        return tmp_path / "model.safetensors"

    bad_inputs = [("unknown dtype", _unknown_dtype, ckpt_core.CorruptInput),
                  ("overlapping tensors", _overlapping, ckpt_core.CorruptInput)]


class TestSafetensorsShardedDirectory(FormatConformance):
    format = "safetensors"

    def make_example(self, tmp_path):
        arrays = _gpt_arrays()
        names = list(arrays)
        directory = tmp_path / "model"
        directory.mkdir()
        shards = {"model-00001-of-00002.safetensors": names[:5], "model-00002-of-00002.safetensors": names[5:]}
        for file, group in shards.items():
            save_file({n: arrays[n] for n in group}, directory / file, metadata={"format": "pt"})
        weight_map = {n: file for file, group in shards.items() for n in group}
        (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        return directory
