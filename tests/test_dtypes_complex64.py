"""C64 (complex64): in the dtype table, held by canonical, safetensors and formats that
declare it, refused by every other format (the default FormatSpec dtypes leave it out)."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.numpy

from ckpt_core import Checkpoint, Tensor, api, dtypes, losses, safetensors_io, torchfile, transforms
from ckpt_core.errors import LossyConversion, UsageError
from ckpt_core.model import FormatSpec


def complex_values() -> np.ndarray:
    return np.array([[1 + 2j, -0.5j], [np.inf, np.nan + 1j]], np.complex64)


def test_c64_is_two_f32_words():
    d = dtypes.get("C64")
    assert (d.itemsize, d.numpy, d.is_float) == (8, np.dtype("<c8"), False)
    assert dtypes.from_numpy(np.dtype(np.complex64)) == "C64"
    assert "C64" in dtypes.ALL_DTYPES and dtypes.STANDARD_DTYPES == dtypes.ALL_DTYPES - {"C64"}


def test_c64_round_trips_through_our_files_and_the_official_library(tmp_path):
    values = complex_values()
    path = tmp_path / "c.safetensors"
    safetensors_io.write_file(path, {"c": Tensor.from_numpy(values)})
    assert safetensors.numpy.load_file(path)["c"].tobytes() == values.tobytes()
    t = safetensors_io.open_file(path)[0]["c"]
    assert t.dtype == "C64" and t.numpy().tobytes() == values.tobytes()
    assert t.T.numpy().tobytes() == values.T.copy().tobytes()


def test_c64_converts_to_torch_and_mlx():
    values = complex_values()
    t = Tensor.from_numpy(values)
    torch = pytest.importorskip("torch")
    out = torchfile.to_torch(t)
    assert out.dtype == torch.complex64 and out.numpy().tobytes() == values.tobytes()
    mx = pytest.importorskip("mlx.core")
    arr = t.to_mlx()
    assert arr.dtype == mx.complex64 and np.array(arr).tobytes() == values.tobytes()


def test_only_formats_that_declare_c64_hold_it(tmp_path):
    ck = Checkpoint(tensors={"c": Tensor.from_numpy(complex_values())})
    assert [loss.kind for loss in losses.find(ck, FormatSpec("plain", "a format with default dtypes"))] == ["dtype"]
    for fmt, name in (("canonical", "canon"), ("safetensors", "c.safetensors")):
        api.save(ck, tmp_path / name, fmt)
        assert api.load(tmp_path / name).tensors["c"].tobytes() == complex_values().tobytes()
    with pytest.raises(UsageError, match="not a float dtype"):
        transforms.cast(ck, {"C64": "F32"})
    with pytest.raises(LossyConversion):
        losses.apply_allowed(ck, FormatSpec("plain", "a format with default dtypes"), ())
