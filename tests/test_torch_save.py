"""ckpt_core.torchfile: torch's zip pickle written without torch, tensors streamed.

Checked against torch itself: what ``torch.load`` (weights only, with and without mmap)
gives back, that the file is torch.save's byte for byte, the zip layout (CRC-32s, 64-byte
alignment, zip64 fields), and that no tensor is read whole and torch is never imported.
"""

import shutil
import struct
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ckpt_core import Tensor, dtypes, safetensors_io, torchfile  # noqa: E402
from ckpt_core.torchfile import writing  # noqa: E402

RNG = np.random.default_rng(0)


def random_tensor(dtype: str, shape: tuple[int, ...]) -> Tensor:
    count = int(np.prod(shape)) * dtypes.get(dtype).itemsize
    raw = RNG.integers(0, 256, count, dtype=np.uint8)
    if dtype == "BOOL":
        raw %= 2
    return Tensor.from_bytes(raw.tobytes(), dtype, shape)


def as_torch(t: Tensor):
    """The same tensor built by torch from the bytes (what torch.save would be given)."""
    dtype = getattr(torch, torchfile.TORCH_DTYPES[t.dtype])
    if t.nbytes == 0:
        return torch.empty(t.shape, dtype=dtype)
    return torch.frombuffer(bytearray(t.tobytes()), dtype=torch.uint8).view(dtype).reshape(t.shape)


def torch_bytes(t) -> bytes:
    return torchfile.from_torch(t).tobytes()


def data_offsets(path: Path) -> dict[str, int]:
    """Where each record's data starts, from its local header."""
    offsets = {}
    with open(path, "rb") as f, zipfile.ZipFile(f) as archive:
        for info in archive.infolist():
            f.seek(info.header_offset)
            local = f.read(30)
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            offsets[info.filename] = info.header_offset + 30 + name_len + extra_len
    return offsets


SHAPES = [(2, 3), (), (0,), (3, 0, 2)]


@pytest.mark.parametrize("mmap", [False, True])
def test_torch_save_every_dtype_and_shape_loads_back_byte_exact(tmp_path, mmap):
    tensors = {f"{d}{list(shape)}": random_tensor(d, shape) for d in sorted(torchfile.TORCH_DTYPES) for shape in SHAPES}
    path = tmp_path / "all.pt"
    torchfile.save({"tensors": tensors, "step": 3, "empty": b"", "raw": b"\x00\xff", "none": None,
                     "nested": [(1.5, "x", -2**40), {"k": [True, 0.1], 3: ()}]}, path)
    back = torch.load(path, weights_only=True, mmap=mmap)
    assert {k: v for k, v in back.items() if k != "tensors"} == {
        "step": 3, "empty": b"", "raw": b"\x00\xff", "none": None, "nested": [(1.5, "x", -2**40), {"k": [True, 0.1], 3: ()}]}
    assert list(back["tensors"]) == list(tensors)
    for name, t in tensors.items():
        got = back["tensors"][name]
        assert torchfile.dtype_name(got.dtype) == t.dtype and tuple(got.shape) == t.shape, name
        assert torch_bytes(got) == t.tobytes(), name


def test_torch_save_storage_classes_are_the_ones_torch_pickles():
    import warnings

    for name, attr in torchfile.TORCH_DTYPES.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage is deprecated, but it names what torch writes
            try:
                legacy = torch.storage.TypedStorage(dtype=getattr(torch, attr), device="cpu")._pickle_storage_type()
            except KeyError:
                legacy = None
        assert torchfile.LEGACY_STORAGES.get(name) == legacy, name


def test_torch_save_file_is_torch_saves_byte_for_byte(tmp_path):
    """Everything but the random serialization id: pickle opcodes, records, padding, CRCs."""
    ours = {f"w{d}": random_tensor(d, (3, 2)) for d in sorted(torchfile.TORCH_DTYPES)}
    ours.update(scalar=random_tensor("F32", ()), empty=random_tensor("BF16", (2, 0, 3)), tie=ours["wF32"])
    theirs = {k: as_torch(t) for k, t in ours.items()}
    theirs["tie"] = theirs["wF32"].detach()  # a state_dict's tie: another tensor over the same storage
    extra = {"iter_num": 7, "best_val_loss": 2.5, "config": {"name": "x", "bytes": b"ab\xff", "list": [1, None, (2, 3)]}}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    torchfile.save({"model": ours, **extra}, tmp_path / "a" / "ckpt.pt")
    torch.save({"model": theirs, **extra}, tmp_path / "b" / "ckpt.pt")
    assert without_serialization_id(tmp_path / "a" / "ckpt.pt") == without_serialization_id(tmp_path / "b" / "ckpt.pt")


def without_serialization_id(path: Path) -> bytes:
    """The file with its random serialization id and that record's CRC-32 blanked."""
    data = path.read_bytes()
    info = zipfile.ZipFile(path).getinfo(f"{path.stem}/.data/serialization_id")
    start = data_offsets(path)[info.filename]
    crc = struct.pack("<I", info.CRC)
    assert data.count(crc) == 2  # in the data descriptor and in the central directory
    return (data[:start] + b"0" * info.file_size + data[start + info.file_size:]).replace(crc, b"CRC!")


@pytest.mark.parametrize(("name", "folder"), [("ckpt.pt", "ckpt"), ("a.b.pt", "a.b"), ("noext", "noext"),
                                              ("wört.pt", "archive")])
def test_torch_save_records_named_as_torch_names_them(tmp_path, name, folder):
    torch.save({"x": torch.ones(2)}, tmp_path / ("t-" + name))
    torchfile.save({"x": Tensor.from_numpy(np.ones(2, np.float32))}, tmp_path / name)
    theirs = zipfile.ZipFile(tmp_path / ("t-" + name)).namelist()
    assert zipfile.ZipFile(tmp_path / name).namelist() == [n.replace(theirs[0].split("/")[0], folder, 1) for n in theirs]
    assert theirs[0].split("/")[0] == ("t-" + folder if folder != "archive" else "archive")


def test_torch_save_crcs_check_and_every_record_is_64_byte_aligned(tmp_path):
    path = tmp_path / "ckpt.pt"
    torchfile.save({"a": random_tensor("F32", (5, 7)), "b": random_tensor("I8", (3,)), "c": [random_tensor("BF16", (1,))]}, path)
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        assert [i.compress_type for i in archive.infolist()] == [zipfile.ZIP_STORED] * 9
    assert all(offset % 64 == 0 for offset in data_offsets(path).values())
    if shutil.which("unzip"):
        assert subprocess.run(["unzip", "-tq", str(path)], check=False, capture_output=True).returncode == 0


def test_torch_save_ties_share_one_storage(tmp_path):
    weight = Tensor.from_numpy(np.arange(12, dtype=np.float32).reshape(3, 4))
    path = tmp_path / "tied.pt"
    torchfile.save({"wte": weight, "lm_head": weight, "view": weight.T}, path)
    for mmap in (False, True):
        back = torch.load(path, weights_only=True, mmap=mmap)
        assert back["wte"].untyped_storage().data_ptr() == back["lm_head"].untyped_storage().data_ptr()
        assert back["wte"] is not back["lm_head"]  # two tensors over one storage, as a state_dict saves them
        assert torch.equal(back["view"], torch.arange(12, dtype=torch.float32).reshape(3, 4).T)
    assert len([n for n in zipfile.ZipFile(path).namelist() if "/data/" in n]) == 2


def test_torch_save_reads_back_with_ckpt_cores_own_reader(tmp_path):
    weight = random_tensor("BF16", (4, 4))
    tensors = {"w": weight, "tied": weight, "f8": random_tensor("F8_E5M2", (3,)), "u64": random_tensor("U64", (2,))}
    path = tmp_path / "ckpt.pt"
    torchfile.save({"model": tensors, "iter_num": 5, "note": b"x"}, path)
    assert torchfile.scan(path).records == ()  # nothing the scanner leaves inert
    back = torchfile.load(path)
    assert back["iter_num"] == 5 and back["note"] == b"x"
    assert back["model"]["w"] is back["model"]["tied"]
    for name, t in tensors.items():
        assert back["model"][name].dtype == t.dtype and back["model"][name].tobytes() == t.tobytes()
        assert back["model"][name].file_range is not None


def test_torch_save_does_not_import_torch(tmp_path):
    path = tmp_path / "ckpt.pt"
    script = f"""
import sys, numpy as np
from ckpt_core import Tensor, torchfile
torchfile.save({{"w": Tensor.from_bytes(bytes(range(16)), "BF16", (2, 4)), "n": [1, b"b"]}}, {str(path)!r})
print("torch" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    back = torch.load(path, weights_only=True, mmap=True)
    assert torch_bytes(back["w"]) == bytes(range(16)) and back["n"] == [1, b"b"]


def file_tensor(path: Path, offset: int, dtype: str, shape: tuple[int, ...]) -> tuple[Tensor, bytes]:
    count = int(np.prod(shape)) * dtypes.get(dtype).itemsize
    data = RNG.integers(0, 256, count, dtype=np.uint8).tobytes()
    path.write_bytes(b"h" * offset + data + b"tail")
    return Tensor.from_file(path, offset, dtype, shape), data


def test_torch_save_streams_file_ranges_larger_than_a_chunk(tmp_path, monkeypatch):
    """A file-range tensor is copied and checksummed a chunk at a time, never read whole
    (Python's allocations stay under three chunks while an 8-chunk tensor is written)."""
    monkeypatch.setattr(writing, "CHUNK_SIZE", 1 << 20)  # the CRC-32 reads
    monkeypatch.setattr(safetensors_io, "CHUNK_SIZE", 1 << 20)  # the copy (through a buffer where the kernel cannot)
    tensor, data = file_tensor(tmp_path / "src.bin", 13, "F32", (2 << 20, 1))  # 8 MiB
    path = tmp_path / "out.pt"
    tracemalloc.start()
    try:
        torchfile.save({"big": tensor, "small": random_tensor("F16", (4,))}, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 << 20
    assert zipfile.ZipFile(path).testzip() is None
    assert torch_bytes(torch.load(path, weights_only=True, mmap=True)["big"]) == data


def test_torch_save_makes_computed_tensors_one_at_a_time(tmp_path, monkeypatch):
    """Transposed and joined tensors are written right, in chunks, and only one of them is
    in memory at a time (Python's allocations peak under one and a half of them)."""
    monkeypatch.setattr(writing, "CHUNK_SIZE", 1 << 16)
    bases = [RNG.standard_normal((512, 512)).astype(np.float32) for _ in range(3)]  # 1 MiB each
    parts = {f"t{i}": Tensor.from_numpy(b).T for i, b in enumerate(bases)}
    parts["cat"] = Tensor.concat([Tensor.from_numpy(bases[0]), Tensor.from_numpy(bases[1][:7])], axis=0)
    path = tmp_path / "out.pt"
    tracemalloc.start()
    try:
        torchfile.save(parts, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * (1 << 20), peak
    assert zipfile.ZipFile(path).testzip() is None
    back = torch.load(path, weights_only=True)
    for name, t in parts.items():
        assert torch_bytes(back[name]) == t.tobytes(), name


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no tmpfs at /dev/shm")
def test_torch_save_copies_from_another_filesystem(tmp_path, monkeypatch):
    """A source on tmpfs and the output elsewhere: ``copy_file_range`` may refuse (EXDEV),
    and the copy goes through a buffer instead, with the same bytes."""
    import tempfile

    monkeypatch.setattr(writing, "CHUNK_SIZE", 1 << 16)
    monkeypatch.setattr(safetensors_io, "CHUNK_SIZE", 1 << 16)
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        tensor, data = file_tensor(Path(shm) / "src.bin", 5, "U16", (100_003,))
        path = tmp_path / "out.pt"
        torchfile.save({"w": tensor}, path)
    assert zipfile.ZipFile(path).testzip() is None
    assert torch_bytes(torch.load(path, weights_only=True, mmap=True)["w"]) == data


def test_torch_save_keeps_a_torch_sources_crc_so_damage_stays_visible(tmp_path):
    """A tensor copied unchanged from a torch file keeps that record's CRC-32: on intact
    bytes it is the one computed anyway; on damaged bytes the copy fails its check too,
    instead of getting a fresh checksum that would hide the damage."""
    torch.save({"w": torch.arange(1000, dtype=torch.float32), "b": torch.ones(3)}, tmp_path / "src.pt")
    src = torchfile.load(tmp_path / "src.pt")
    torchfile.save({"w": src["w"]}, tmp_path / "copy.pt")
    assert zipfile.ZipFile(tmp_path / "copy.pt").getinfo("copy/data/0").CRC == \
        zipfile.ZipFile(tmp_path / "src.pt").getinfo("src/data/0").CRC
    assert zipfile.ZipFile(tmp_path / "copy.pt").testzip() is None

    damaged = bytearray((tmp_path / "src.pt").read_bytes())
    damaged[src["w"].file_range.offset + 100] ^= 0x10
    (tmp_path / "src.pt").write_bytes(bytes(damaged))
    torchfile.save({"w": src["w"], "other": Tensor.from_file(tmp_path / "src.pt", src["w"].file_range.offset, "F32", (999,))},
                    tmp_path / "copy2.pt")
    assert zipfile.ZipFile(tmp_path / "copy2.pt").testzip() == "copy2/data/0"
    with zipfile.ZipFile(tmp_path / "copy2.pt") as archive:  # not a whole record: checksummed as read
        assert archive.read("copy2/data/1") == bytes(damaged[src["w"].file_range.offset:][:3996])


def test_torch_save_zip64_fields_read_back(tmp_path, monkeypatch):
    """Sizes and offsets past 4 GB go into zip64 fields; lowering the threshold puts every
    record past it, so torch, zipfile and ckpt-core's reader read them on a small file."""
    monkeypatch.setattr(writing, "ZIP64_FROM", 300)
    tensors = {"big": random_tensor("F32", (20, 10)), "small": random_tensor("I64", (3,)), "empty": random_tensor("U8", (0,))}
    path = tmp_path / "z64.pt"
    torchfile.save({"model": tensors, "n": 1}, path)
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        assert all(info.extra[:2] == b"\x01\x00" for info in archive.infolist()[1:])  # zip64 field first
    assert all(offset % 64 == 0 for offset in data_offsets(path).values())
    for mmap in (False, True):
        back = torch.load(path, weights_only=True, mmap=mmap)
        assert {k: torch_bytes(v) for k, v in back["model"].items()} == {k: t.tobytes() for k, t in tensors.items()}
    assert torchfile.load(path)["model"]["big"].tobytes() == tensors["big"].tobytes()

