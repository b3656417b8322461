"""The ``quantized`` capability: weights packed by quantization (the ``quantization``
hyper-parameter) go only to formats that hold them, bit for bit; any other refuses before
writing, naming the option that unpacks them."""

from __future__ import annotations

import pytest

import ckpt_core
from ckpt_core import Arch, Checkpoint, LossyConversion, Tensor
from ckpt_core.model import QUANTIZATION
from ckpt_core.tensor import same_bytes

PACKING = {"group_size": 32, "bits": 4, "mode": "affine"}


def packed() -> Checkpoint:
    return Checkpoint(arch=Arch("generic", {QUANTIZATION: PACKING}), tensors={
        "proj.weight": Tensor.from_bytes(bytes(range(256)) * 2, "U32", (8, 16)),
        "proj.scales": Tensor.from_bytes(b"\x01\x3f" * 16, "BF16", (8, 2)),
        "proj.biases": Tensor.from_bytes(b"\x00\xbf" * 16, "BF16", (8, 2)),
    })


@pytest.mark.parametrize("fmt, name", [("canonical", "ckpt"), ("safetensors", "model.safetensors")])
def test_formats_that_hold_packed_weights_keep_them_exactly(tmp_path, fmt, name):
    ck = packed()
    ckpt_core.save(ck, tmp_path / name, fmt)
    back = ckpt_core.load(tmp_path / name)
    assert back.arch.params[QUANTIZATION] == PACKING
    assert all(same_bytes(back.tensors[n], t) for n, t in ck.tensors.items())


def test_a_format_without_them_refuses_naming_the_option(tmp_path):
    with pytest.raises(LossyConversion, match=r"packed by quantization \(mode affine, bits 4, group_size 32\).*"
                                              r"--option dequantize=true") as refused:
        ckpt_core.save(packed(), tmp_path / "run", "mlx")
    assert [loss.kind for loss in refused.value.losses] == ["quantized"]
    assert not (tmp_path / "run").exists()
