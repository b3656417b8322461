"""ckpt_core.torchfile: torch zip pickles read without torch and without running anything."""

import collections
import dataclasses
import zipfile

import pytest

torch = pytest.importorskip("torch")

from ckpt_core import torchfile  # noqa: E402
from ckpt_core.errors import CorruptInput  # noqa: E402
from ckpt_core.torchfile import from_torch  # noqa: E402


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
    scan = torchfile.scan(tmp_path / "a.pt")
    assert scan.records == ()
    lazy = torchfile.lazy(tmp_path / "a.pt", scan)
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
    scan = torchfile.scan(tmp_path / "b.pt")
    assert scan.records == ("test_torch_pickle.ScriptState",)
    assert isinstance(scan.obj["state"], torchfile.Record) and not marker.exists()
    assert isinstance(scan.obj["model"]["w"], torchfile.TensorStub)


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
        torchfile.scan(tmp_path / "bad.pt")
    with zipfile.ZipFile(tmp_path / "deflated.pt", "w", compression=zipfile.ZIP_DEFLATED) as z:
        for n in names:
            z.writestr(n, members[n])
    with pytest.raises(CorruptInput, match="compressed"):
        torchfile.lazy(tmp_path / "deflated.pt", torchfile.scan(tmp_path / "deflated.pt"))
    (tmp_path / "not-zip.pt").write_bytes(b"hello")
    with pytest.raises(CorruptInput):
        torchfile.scan(tmp_path / "not-zip.pt")


def test_load_reads_plain_files_itself_and_the_rest_through_torch(tmp_path):
    from ckpt_core import Tensor
    from ckpt_core.errors import UnsafeInput

    weight = torch.randn(3, 2)
    state = {"wte": weight, "head": weight, "step": 7}
    torch.save(state, tmp_path / "plain.pt")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)  # not a zip: torch reads it
    for name in ("plain.pt", "legacy.pt"):
        tree = torchfile.load(tmp_path / name)
        assert isinstance(tree["wte"], Tensor) and tree["head"] is tree["wte"] and tree["step"] == 7, name
        assert tree["wte"].tobytes() == from_torch(weight).tobytes(), name
    marker = tmp_path / "ran"
    torch.save({"w": weight, "state": ScriptState(str(marker))}, tmp_path / "unsafe.pt")
    with pytest.raises(UnsafeInput, match="ScriptState"):
        torchfile.load(tmp_path / "unsafe.pt")
    assert not marker.exists()


def _rezipped(src, dst, pkl_bytes):
    """``src`` with its data.pkl replaced, written as a stored zip at ``dst``."""
    with zipfile.ZipFile(src) as z:
        members = [(n, z.read(n)) for n in z.namelist()]
    with zipfile.ZipFile(dst, "w") as z:
        for n, content in members:
            z.writestr(n, pkl_bytes if n.endswith("data.pkl") else content)


@pytest.mark.parametrize("stride", [-1, 2 ** 40])
def test_a_stride_outside_the_storage_is_corrupt_input_not_a_wild_read(tmp_path, stride):
    """A negative or huge stride once passed the bounds check and made the strided view read
    outside the mapped file (a segfault): the scanner refuses any shape, stride or offset
    that is not a non-negative int, and every tensor it makes fits its storage."""
    import pickle
    import pickletools

    torch.save({"w": torch.arange(4.0)}, tmp_path / "ok.pt")
    with zipfile.ZipFile(tmp_path / "ok.pt") as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    ops = list(pickletools.genops(data))
    after_pid = next(i for i, (op, _, _) in enumerate(ops) if op.name == "BINPERSID")
    ints = [i for i in range(after_pid, len(ops)) if ops[i][0].name in ("BININT1", "BININT", "BININT2")]
    stride_at = ints[2]  # offset 0, shape (4,), stride (1,)
    start, end = ops[stride_at][2], ops[stride_at + 1][2]
    _rezipped(tmp_path / "ok.pt", tmp_path / "bad.pt", data[:start] + pickle.dumps(stride, 2)[2:-1] + data[end:])
    if stride < 0:
        with pytest.raises(CorruptInput, match="damaged pickle"):
            torchfile.scan(tmp_path / "bad.pt")
    with pytest.raises(CorruptInput):
        torchfile.load(tmp_path / "bad.pt")


def test_an_unknown_zip_version_is_corrupt_input(tmp_path):
    """zipfile raises NotImplementedError for a record needing a newer zip version."""
    from ckpt_core.torchfile import check_archive

    torch.save({"w": torch.ones(3)}, tmp_path / "ok.pt")
    data = bytearray((tmp_path / "ok.pt").read_bytes())
    data[data.find(b"PK\x01\x02") + 6] = 200  # version needed to extract: 20.0
    (tmp_path / "bad.pt").write_bytes(bytes(data))
    with pytest.raises(CorruptInput, match="zip file version"):
        torchfile.scan(tmp_path / "bad.pt")
    with pytest.raises(CorruptInput):
        check_archive(tmp_path / "bad.pt")


def test_python_2_spellings_are_named_as_python_3_imports_them(tmp_path):
    """Protocol 2 writes ``subprocess.Popen`` as ``commands.Popen``: records and the
    static listing name what unpickling would really import."""
    import pickle
    import subprocess

    class Spawn:
        def __reduce__(self):
            return subprocess.Popen, (["true"],)

    torch.save({"w": torch.ones(1), "x": Spawn()}, tmp_path / "a.pt")
    (tmp_path / "b.pkl").write_bytes(pickle.dumps({"x": Spawn()}, protocol=4))
    assert torchfile.scan(tmp_path / "a.pt").records == ("subprocess.Popen",)
    assert "subprocess.Popen" in torchfile.named_globals(tmp_path / "a.pt")
    assert torchfile.named_globals(tmp_path / "b.pkl") == ["subprocess.Popen"]


# -- bounds: shared, cyclic and deep structure; lying archives; unknown dtypes ---------------


def test_a_container_named_twice_is_converted_once_and_shared(tmp_path):
    """torch.load gives one object where the pickle names one twice (its memo); so do the
    scanner and tree_from_torch, converting it once."""
    config = {"lr": [1e-3, 1e-4], "betas": (0.9, 0.95)}
    torch.save({"w": torch.ones(2), "a": config, "b": config, "c": [config, config]}, tmp_path / "a.pt")
    for tree in (torchfile.load(tmp_path / "a.pt"),
                 torchfile.tree_from_torch(torch.load(tmp_path / "a.pt", weights_only=True))):
        assert tree["a"] == config and tree["a"] is tree["b"] is tree["c"][0] is tree["c"][1]


@pytest.mark.parametrize("kind", ["shared", "cyclic", "deep"])
def test_structure_bombs_are_corrupt_by_both_readers(tmp_path, kind):
    """A shared (2**60 items along every reference), cyclic or 100,000-deep object in a
    torch zip: the scanner and the torch-backed loader both refuse it as corrupt."""
    import bad_input_cases as cases

    torchfile.save({"w": torchfile.from_torch(torch.ones(2))}, tmp_path / "ok.pt")
    cases.with_pickle(tmp_path / "ok.pt", tmp_path / "bomb.pt", lambda d: cases.plant(d, "bomb", cases.STRUCTURE_BOMBS[kind]()))
    for read in (torchfile.scan, torchfile.load, torchfile.load_pickle):
        with pytest.raises(CorruptInput, match=f"bomb.pt: .*{cases.STRUCTURE_WORDS[kind]}"):
            read(tmp_path / "bomb.pt")


def test_a_shifted_local_header_of_a_torch_written_file_is_corrupt(tmp_path):
    """torch's own archives put sizes in a data descriptor after the data: an extra length
    changed in a local header (which would shift where the data is read) is caught by the
    descriptor not being where the sizes say, and by the extra field not parsing. (A shift
    onto bytes that happen to parse, zeros where the field would end, is a valid layout to
    every reader: only the CRC-32, ``verify=true``, tells it.)"""
    torch.save({"w": torch.arange(1, 65, dtype=torch.float32)}, tmp_path / "a.pt")
    data = bytearray((tmp_path / "a.pt").read_bytes())
    with zipfile.ZipFile(tmp_path / "a.pt") as z:
        info = z.getinfo("a/data/0")
    for shift in (4, -4, 8, 64):
        damaged = bytearray(data)
        extra_len = int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
        damaged[info.header_offset + 28:info.header_offset + 30] = (extra_len + shift).to_bytes(2, "little")
        (tmp_path / "b.pt").write_bytes(damaged)
        for read in (torchfile.load, torchfile.load_pickle, torchfile.stored_records):
            with pytest.raises(CorruptInput, match="local header of a/data/0 disagrees"):
                read(tmp_path / "b.pt")


def test_a_tensor_of_a_dtype_without_a_safetensors_name_is_corrupt_naming_the_file(tmp_path):
    torch.save({"w": torch.zeros(3, dtype=torch.float8_e8m0fnu)}, tmp_path / "a.pt")
    with pytest.raises(CorruptInput, match=r"a\.pt: data\.pkl names a tensor of dtype torch\.float8_e8m0fnu"):
        torchfile.load(tmp_path / "a.pt")
    torch.save({"w": torch.zeros(3, dtype=torch.complex128)}, tmp_path / "b.pt")
    with pytest.raises(CorruptInput, match=r"b\.pt: data\.pkl names a storage of torch\.ComplexDoubleStorage, which has no"):
        torchfile.load(tmp_path / "b.pt")


def test_tensor_with_python_attributes_reads_as_the_tensor(tmp_path):
    """torch pickles a tensor carrying attributes (DeepSpeed's ``ds_id`` on ZeRO-3
    partitions) through ``torch._tensor._rebuild_from_type_v2``: read as the tensor."""
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    t.ds_id = "0_4"
    torch.save({"flat": [t]}, tmp_path / "f.pt")
    found = torchfile.scan(tmp_path / "f.pt")
    assert found.records == ()
    got = torchfile.lazy(tmp_path / "f.pt", found)["flat"][0]
    assert torch.equal(torchfile.to_torch(got), t) and got.file_range is not None


def test_an_archive_inside_a_larger_file_reads_at_its_span(tmp_path):
    """A torch.save zip at a byte range of another file (as each item of a DCP .distcp
    file): the same objects, tensors as ranges of the larger file; a span cut short is
    CorruptInput naming the file and the span."""
    import io

    saved = {"w": torch.randn(4, 3), "n": 7}
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    item = buffer.getvalue()
    whole = tmp_path / "pack.bin"
    whole.write_bytes(b"x" * 100 + item + b"y" * 50)
    scan = torchfile.scan(whole, (100, len(item)))
    lazy = torchfile.lazy(whole, scan)
    assert lazy["n"] == 7 and lazy["w"].file_range.path == whole and lazy["w"].file_range.offset > 100
    assert lazy["w"].tobytes() == from_torch(saved["w"]).tobytes()
    with pytest.raises(CorruptInput, match=r"pack\.bin \(the zip at byte 100"):
        torchfile.scan(whole, (100, len(item) - 30))
