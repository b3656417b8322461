"""ckpt_core.torch_save: torch's zip pickle written from lazy Tensors, one at a time."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ckpt_core import Tensor, dtypes, torch_io, torch_save  # noqa: E402


def test_every_dtype_loads_back_byte_exact_and_weights_only(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {d: Tensor.from_bytes(rng.integers(0, 256, 6 * dtypes.get(d).itemsize, dtype=np.uint8).tobytes(), d, (2, 3))
               for d in sorted(torch_io.TORCH_DTYPES) if d != "BOOL"}
    tensors["BOOL"] = Tensor.from_numpy(np.array([True, False, True]))
    path = tmp_path / "all.pt"
    torch_save.save({"tensors": tensors, "step": 3, "empty": b"", "nested": [(1.5, "x")]}, path)
    back = torch.load(path, weights_only=True, mmap=True)
    assert back["step"] == 3 and back["empty"] == b"" and back["nested"] == [(1.5, "x")]
    for name, t in tensors.items():
        assert torch_io.dtype_name(back["tensors"][name].dtype) == name
        assert torch_io.from_torch(back["tensors"][name]).tobytes() == t.tobytes()


def test_one_object_twice_is_one_storage_and_odd_shapes_survive(tmp_path):
    weight = Tensor.from_numpy(np.arange(12, dtype=np.float32).reshape(3, 4))
    path = tmp_path / "tied.pt"
    torch_save.save({"wte": weight, "lm_head": weight, "scalar": Tensor.from_numpy(np.array(2.5, np.float32)),
                     "empty": Tensor.from_bytes(b"", "BF16", (0, 4)), "view": weight.T}, path)
    back = torch.load(path, weights_only=True)
    assert back["wte"].untyped_storage().data_ptr() == back["lm_head"].untyped_storage().data_ptr()
    assert back["scalar"].shape == () and float(back["scalar"]) == 2.5
    assert back["empty"].shape == (0, 4) and back["empty"].dtype == torch.bfloat16
    assert torch.equal(back["view"], torch.arange(12, dtype=torch.float32).reshape(3, 4).T)
