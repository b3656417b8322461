"""ckpt_core.torchfile: safe pickle loading and exact torch <-> Tensor moves."""

import dataclasses

import pytest

torch = pytest.importorskip("torch")

from ckpt_core import torchfile  # noqa: E402
from ckpt_core.errors import CorruptInput, NotFound, UnsafeInput  # noqa: E402
from ckpt_core.tensor import Tensor  # noqa: E402


@dataclasses.dataclass
class Payload:
    """A class a malicious or script-defined pickle could reference."""

    x: int


@pytest.mark.parametrize("dtype", sorted(torchfile.TORCH_DTYPES))
def test_round_trip_every_dtype_bit_exact(dtype):
    words = torch.randint(0, 255, (3, 8), dtype=torch.uint8)
    original = words.view(getattr(torch, torchfile.TORCH_DTYPES[dtype])) if torchfile.TORCH_DTYPES[dtype] != "bool" else words % 2 == 1
    t = torchfile.from_torch(original)
    assert t.dtype == dtype and t.shape == tuple(original.shape)
    back = torchfile.to_torch(t)
    assert back.dtype == original.dtype
    assert torch.equal(back.reshape(-1).view(torch.uint8), original.contiguous().reshape(-1).view(torch.uint8))


@pytest.mark.parametrize("dtype", ["F32", "BF16", "I64", "U8"])
def test_empty_tensors_of_every_width_convert(dtype):
    back = torchfile.to_torch(Tensor.from_bytes(b"", dtype, (0, 3)))
    assert back.shape == (0, 3) and back.dtype == getattr(torch, torchfile.TORCH_DTYPES[dtype])


def test_zero_dim_and_non_contiguous():
    assert torchfile.from_torch(torch.tensor(1.5)).numpy() == 1.5
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()
    assert (torchfile.from_torch(x).numpy() == x.numpy()).all()


def test_load_pickle_is_lazy_and_weights_only(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {"w": torch.ones(2, 3)}, "iter_num": 7}, path)
    obj = torchfile.load_pickle(path)
    assert obj["iter_num"] == 7
    t = torchfile.from_torch(obj["model"]["w"])
    assert t.shape == (2, 3) and t.numpy().sum() == 6


def test_pickle_needing_code_is_refused_with_every_global_named(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"a": torch.ones(1), "p": Payload(1)}, path)
    with pytest.raises(UnsafeInput, match=r"Payload.*refused"):
        torchfile.load_pickle(path)


def test_legacy_non_zip_pickle_loads_without_mmap(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
    assert torchfile.load_pickle(path)["w"].shape == (2,)


def test_damaged_and_missing_files(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(1000)}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:500])
    with pytest.raises(CorruptInput, match="cut.pt"):
        torchfile.load_pickle(cut)
    with pytest.raises(NotFound):
        torchfile.load_pickle(tmp_path / "missing.pt")


def test_tensor_to_torch_matches_from_numpy():
    import numpy as np

    t = Tensor.from_numpy(np.array([0x3F80, 0x4000], dtype=np.uint16), "BF16")
    assert torchfile.to_torch(t).tolist() == [1.0, 2.0]


def test_tree_from_torch_makes_plain_trees_with_lazy_tensors():
    import collections

    import numpy as np

    loaded = collections.OrderedDict(w=torch.ones(2, dtype=torch.bfloat16), rng=np.arange(3, dtype=np.uint32),
                                     n=np.int64(7), shape=torch.Size([2, 3]), groups=[{"lr": 0.1, "params": (0, 1)}])
    tree = torchfile.tree_from_torch(loaded)
    assert type(tree) is dict and list(tree) == ["w", "rng", "n", "shape", "groups"]
    assert isinstance(tree["w"], Tensor) and tree["w"].dtype == "BF16"
    assert isinstance(tree["rng"], Tensor) and tree["rng"].numpy().tolist() == [0, 1, 2]
    assert tree["n"] == 7 and type(tree["n"]) is int
    assert tree["shape"] == (2, 3) and type(tree["shape"]) is tuple
    assert tree["groups"] == [{"lr": 0.1, "params": (0, 1)}]


def test_tensors_of_a_loaded_pickle_are_file_ranges_with_the_same_bytes(tmp_path):
    weight = torch.randn(6, 4)
    saved = {"w": weight, "tied": weight, "row": weight[2], "cols": weight.t(), "half": torch.randn(3, dtype=torch.bfloat16),
             "empty": torch.zeros(0, 2)}
    torch.save(saved, tmp_path / "a.pt")
    loaded = torchfile.load_pickle(tmp_path / "a.pt")
    lazy = {k: torchfile.from_torch(v) for k, v in loaded.items()}
    for name in ("w", "tied", "row", "half"):
        rng = lazy[name].file_range
        assert rng is not None and rng.path == tmp_path / "a.pt", name
        assert lazy[name].tobytes() == saved[name].contiguous().view(torch.uint8).numpy().tobytes(), name
    assert lazy["w"].file_range == lazy["tied"].file_range
    assert lazy["row"].file_range.offset == lazy["w"].file_range.offset + 2 * 4 * 4
    assert lazy["cols"].file_range is None and torch.equal(torchfile.to_torch(lazy["cols"]), weight.t())  # not contiguous: read via torch
    assert lazy["empty"].shape == (0, 2)


def test_legacy_pickle_needing_code_names_the_global_and_garbage_is_corrupt(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    with open(tmp_path / "legacy.pt", "wb") as f:
        torch.save({"a": Evil()}, f, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeInput, match=r"it needs posix\.system"):
        torchfile.load_pickle(tmp_path / "legacy.pt")
    (tmp_path / "garbage.pt").write_bytes(bytes(range(256)) * 20)
    with pytest.raises(CorruptInput, match="not a readable torch pickle"):
        torchfile.load_pickle(tmp_path / "garbage.pt")


def test_tree_from_torch_keeps_one_tensor_under_several_keys_as_one():
    weight = torch.ones(2, 3)
    tree = torchfile.tree_from_torch({"wte": weight, "head": weight, "other": torch.ones(2, 3), "list": [weight]})
    assert tree["wte"] is tree["head"] is tree["list"][0] and tree["other"] is not tree["wte"]


class _Reduce:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("form", ["zip", "legacy", "bare pickle"])
def test_code_globals_are_named_in_every_pickle_protocol_and_form(tmp_path, protocol, form):
    """torch's weights-only unpickler cannot read protocols 0, 4 and 5 at all (and its own
    scan misses globals there and in non-zip files): the refusal still names the global, as
    Python 3 imports it (protocol 2 spells ``subprocess`` the Python 2 way, ``commands``)."""
    import pickle
    import subprocess

    canary = tmp_path / "ran"
    obj = {"model": {"w": torch.ones(2)}, "hook": [_Reduce(subprocess.check_call, (["touch", str(canary)],))]}
    path = tmp_path / "evil.pt"
    if form == "zip":
        torch.save(obj, path, pickle_protocol=protocol)
    elif form == "legacy":
        torch.save(obj, path, pickle_protocol=protocol, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps({"hook": obj["hook"]}, protocol=protocol))
    with pytest.raises(UnsafeInput, match=r"it needs subprocess\.check_call\b") as caught:
        torchfile.load_pickle(path)
    assert "\n" not in str(caught.value) and not canary.exists()


def test_damage_torch_load_meets_as_any_exception_is_corrupt_input(tmp_path):
    """A pickle that calls an allowed tensor rebuild with the wrong arguments makes
    torch.load raise TypeError (weights only: nothing ran): damage, not a plugin crash."""
    torch.save({"w": _Reduce(torch._utils._rebuild_tensor_v2, ("not a storage",))}, tmp_path / "bad.pt")
    with pytest.raises(CorruptInput, match="not a readable torch checkpoint"):
        torchfile.load_pickle(tmp_path / "bad.pt")


def test_is_zip_is_false_for_a_damaged_zip64_end_record(tmp_path):
    """``zipfile.is_zipfile`` raises BadZipFile for a ZIP64 locator naming several disks;
    ``is_zip`` says False, and the file still loads (torch's reader ignores the locator)."""
    import struct

    from ckpt_core import torchfile

    torch.save({"w": torch.arange(3.0)}, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    end = data.rfind(b"PK\x05\x06")
    locator = struct.pack("<IIQI", 0x07064B50, 0, 0, 2)  # a ZIP64 end locator: two disks
    (tmp_path / "bad.pt").write_bytes(data[:end] + locator + data[end:])
    assert torchfile.is_zip(tmp_path / "ok.pt") and not torchfile.is_zip(tmp_path / "bad.pt")
    assert torch.equal(torchfile.load_pickle(tmp_path / "bad.pt")["w"], torch.arange(3.0))
    assert torchfile.load(tmp_path / "bad.pt")["w"].numpy().tolist() == [0.0, 1.0, 2.0]
