"""ckpt_core.torch_pickle: torch zip pickles read without torch and without running anything."""

import collections
import dataclasses
import zipfile

import pytest

torch = pytest.importorskip("torch")

from ckpt_core import torch_pickle  # noqa: E402
from ckpt_core.errors import CorruptInput  # noqa: E402
from ckpt_core.torch_io import from_torch  # noqa: E402


@dataclasses.dataclass
class ScriptState:
    """A class a training script defines: a pickle naming it cannot be loaded weights-only."""

    path: str

    def __setstate__(self, state):  # would run on a real unpickling
        open(state["path"], "w").close()


def test_lazy_equals_torch_load(tmp_path):
    weight = torch.randn(5, 3)
    saved = collections.OrderedDict(
        w=weight, tied=weight, row=weight[1], cols=weight.t(), half=torch.randn(4, dtype=torch.bfloat16),
        ints=torch.arange(6, dtype=torch.int64).reshape(2, 3), flags=torch.tensor([True, False]), scalar=torch.tensor(2.5),
        empty=torch.zeros(0, 3), param=torch.nn.Parameter(torch.ones(2)), shape=torch.Size([2, 3]),
        nested={"list": [1, (2.0, "x")], "bytes": b"\x00\x01", "set": {1, 2}},
    )
    torch.save(saved, tmp_path / "a.pt")
    scan = torch_pickle.scan(tmp_path / "a.pt")
    assert scan.records == ()
    lazy = torch_pickle.lazy(tmp_path / "a.pt", scan)
    loaded = torch.load(tmp_path / "a.pt", weights_only=True)
    assert type(lazy) is dict and list(lazy) == list(loaded)
    for name, value in loaded.items():
        if isinstance(value, torch.Tensor):
            assert (lazy[name].dtype, lazy[name].shape) == (from_torch(value).dtype, tuple(value.shape)), name
            assert lazy[name].tobytes() == from_torch(value).tobytes(), name
    assert lazy["tied"] is lazy["w"] and lazy["w"].file_range is not None and lazy["cols"].file_range is None
    assert lazy["shape"] == (2, 3) and lazy["nested"] == {"list": [1, (2.0, "x")], "bytes": b"\x00\x01", "set": {1, 2}}


def test_unknown_classes_stay_inert_records(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model": {"w": torch.ones(2)}, "state": ScriptState(str(marker))}, tmp_path / "b.pt")
    scan = torch_pickle.scan(tmp_path / "b.pt")
    assert scan.records == ("test_torch_pickle.ScriptState",)
    assert isinstance(scan.obj["state"], torch_pickle.Record) and not marker.exists()
    assert isinstance(scan.obj["model"]["w"], torch_pickle.TensorStub)


def test_damage_is_corrupt_input(tmp_path):
    torch.save({"w": torch.ones(3)}, tmp_path / "c.pt")
    with zipfile.ZipFile(tmp_path / "c.pt") as z:
        names = z.namelist()
        members = {n: z.read(n) for n in names}
    pkl = next(n for n in names if n.endswith("data.pkl"))
    with zipfile.ZipFile(tmp_path / "bad.pt", "w") as z:
        for n in names:
            z.writestr(n, members[n][: len(members[n]) // 2] if n == pkl else members[n])
    with pytest.raises(CorruptInput, match="damaged pickle"):
        torch_pickle.scan(tmp_path / "bad.pt")
    with zipfile.ZipFile(tmp_path / "deflated.pt", "w", compression=zipfile.ZIP_DEFLATED) as z:
        for n in names:
            z.writestr(n, members[n])
    with pytest.raises(CorruptInput, match="compressed"):
        torch_pickle.lazy(tmp_path / "deflated.pt", torch_pickle.scan(tmp_path / "deflated.pt"))
    (tmp_path / "not-zip.pt").write_bytes(b"hello")
    with pytest.raises(CorruptInput):
        torch_pickle.scan(tmp_path / "not-zip.pt")


def test_load_reads_plain_files_itself_and_the_rest_through_torch(tmp_path):
    from ckpt_core import Tensor
    from ckpt_core.errors import UnsafeInput

    weight = torch.randn(3, 2)
    state = {"wte": weight, "head": weight, "step": 7}
    torch.save(state, tmp_path / "plain.pt")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)  # not a zip: torch reads it
    for name in ("plain.pt", "legacy.pt"):
        tree = torch_pickle.load(tmp_path / name)
        assert isinstance(tree["wte"], Tensor) and tree["head"] is tree["wte"] and tree["step"] == 7, name
        assert tree["wte"].tobytes() == from_torch(weight).tobytes(), name
    marker = tmp_path / "ran"
    torch.save({"w": weight, "state": ScriptState(str(marker))}, tmp_path / "unsafe.pt")
    with pytest.raises(UnsafeInput, match="ScriptState"):
        torch_pickle.load(tmp_path / "unsafe.pt")
    assert not marker.exists()
