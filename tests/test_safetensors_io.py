"""Our safetensors reader and writer against the official library and real writers' quirks."""

from __future__ import annotations

import json
import os
import struct
import zlib

import numpy as np
import pytest
import safetensors
import safetensors.numpy

from ckpt_core import dtypes, safetensors_io
from ckpt_core.errors import CorruptInput, NotFound, UnsafeInput, UsageError
from ckpt_core.tensor import Tensor

NUMPY_DTYPES = [d for d in sorted(dtypes.DTYPES) if dtypes.get(d).numpy is not None]


def sample_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """One array per numpy-representable dtype, of assorted shapes (scalar and empty too)."""
    rng = np.random.default_rng(seed)
    shapes = [(3, 4), (5,), (), (2, 0, 3), (2, 3, 2), (7,), (1, 1), (4, 1), (3,), (2, 2), (6, 1, 1), (9,)]
    out = {}
    for i, dtype in enumerate(NUMPY_DTYPES):
        shape = shapes[i % len(shapes)]
        np_dtype = dtypes.get(dtype).numpy
        if dtype == "BOOL":
            arr = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif np_dtype.kind == "f":
            arr = rng.standard_normal(size=shape).astype(np_dtype)
        elif np_dtype.kind == "c":
            arr = (rng.standard_normal(size=shape) + 1j * rng.standard_normal(size=shape)).astype(np_dtype)
        else:
            info = np.iinfo(np_dtype)
            arr = rng.integers(info.min, info.max, size=shape, dtype=np_dtype, endpoint=True)
        out[f"t.{dtype.lower()}"] = np.asarray(arr)
    return out


def build_file(path, entries: dict, data: bytes, *, metadata="absent", pad: bool = False) -> None:
    """A safetensors file built by hand (as MLX and others write them): ``entries`` maps a
    name to (dtype, shape, begin, end) in the order given; metadata may be None (null)."""
    header = {}
    if metadata != "absent":
        header["__metadata__"] = metadata
    for name, (dtype, shape, begin, end) in entries.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}
    text = json.dumps(header).encode()
    if pad:
        text += b" " * (-(8 + len(text)) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


# -- interop with the official library ------------------------------------------------------


def test_our_files_load_with_the_official_library(tmp_path):
    arrays = sample_arrays()
    path = tmp_path / "ours.safetensors"
    sums = safetensors_io.write_file(path, {k: Tensor.from_numpy(v) for k, v in arrays.items()},
                                     {"format": "pt", "note": "ü"}, checksums=True)
    loaded = safetensors.numpy.load_file(path)
    assert set(loaded) == set(arrays)
    for name, arr in arrays.items():
        assert loaded[name].dtype == arr.dtype and loaded[name].shape == arr.shape
        assert loaded[name].tobytes() == arr.tobytes()
        assert sums[name] == f"crc32:{zlib.crc32(arr.tobytes()):08x}"
    with safetensors.safe_open(path, framework="numpy") as f:
        assert f.metadata() == {"format": "pt", "note": "ü"}
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert (8 + n) % 8 == 0  # data 8-byte aligned, as the library writes


def test_bf16_and_fp8_files_load_with_the_official_torch_loader(tmp_path):
    torch = pytest.importorskip("torch")
    import safetensors.torch

    rng = np.random.default_rng(1)
    words = {"bf16": (rng.integers(0, 1 << 16, (4, 3), dtype=np.uint16), "BF16", torch.bfloat16),
             "e4m3": (rng.integers(0, 256, (5,), dtype=np.uint8), "F8_E4M3", torch.float8_e4m3fn),
             "e5m2": (rng.integers(0, 256, (2, 2), dtype=np.uint8), "F8_E5M2", torch.float8_e5m2)}
    path = tmp_path / "words.safetensors"
    safetensors_io.write_file(path, {k: Tensor.from_numpy(w, dtype=d) for k, (w, d, _) in words.items()})
    loaded = safetensors.torch.load_file(path)
    for name, (w, _, tdtype) in words.items():
        assert loaded[name].dtype == tdtype
        assert loaded[name].view(torch.uint8).numpy().tobytes() == w.tobytes()
    # and the other way: files torch's writer made read back word for word
    back_path = tmp_path / "torch.safetensors"
    safetensors.torch.save_file(loaded, back_path)
    tensors, _ = safetensors_io.open_file(back_path)
    for name, (w, d, _) in words.items():
        assert tensors[name].dtype == d
        np.testing.assert_array_equal(tensors[name].raw(), w)


def test_we_read_files_the_official_library_writes(tmp_path):
    arrays = sample_arrays(seed=2)
    path = tmp_path / "theirs.safetensors"
    safetensors.numpy.save_file(arrays, path, metadata={"format": "np", "step": "10"})
    tensors, metadata = safetensors_io.open_file(path)
    assert metadata == {"format": "np", "step": "10"}
    assert set(tensors) == set(arrays)
    for name, arr in arrays.items():
        t = tensors[name]
        assert t.dtype == dtypes.from_numpy(arr.dtype) and t.shape == arr.shape
        assert t.file_range is not None and t.file_range.path == path
        assert t.tobytes() == arr.tobytes()
        np.testing.assert_array_equal(t.numpy(), arr)


def test_no_metadata_gives_none(tmp_path):
    path = tmp_path / "plain.safetensors"
    safetensors.numpy.save_file({"a": np.zeros(3, np.float32)}, path)
    assert safetensors_io.open_file(path)[1] is None


# -- what real writers do -----------------------------------------------------------------------


def test_null_metadata_unpadded_header_and_offsets_out_of_key_order(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.arange(4, dtype=np.uint16)
    c = np.array([1, 0, 1], np.uint8)
    data = c.tobytes() + b.tobytes() + a.tobytes()  # stored in the reverse of key order
    entries = {
        "a": ("F32", a.shape, 11, 35),
        "b": ("BF16", b.shape, 3, 11),
        "c": ("BOOL", c.shape, 0, 3),
    }
    path = tmp_path / "step_000100.safetensors"
    build_file(path, entries, data, metadata=None, pad=False)
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert (8 + n) % 8 != 0, "the header must really be unpadded for this test"
    found, metadata, start = safetensors_io.read_header(path)
    assert metadata is None and start == 8 + n
    assert list(found) == ["a", "b", "c"]  # header order kept
    tensors, _ = safetensors_io.open_file(path)
    np.testing.assert_array_equal(tensors["a"].numpy(), a)
    np.testing.assert_array_equal(tensors["b"].raw(), b)
    np.testing.assert_array_equal(tensors["c"].numpy(), c.astype(bool))
    # the official library agrees about the hand-built file
    with safetensors.safe_open(path, framework="numpy") as f:
        np.testing.assert_array_equal(f.get_tensor("a"), a)
        np.testing.assert_array_equal(f.get_tensor("c"), c.astype(bool))


def test_empty_file_of_tensors_and_zero_size_tensors(tmp_path):
    path = tmp_path / "empty.safetensors"
    build_file(path, {}, b"", metadata={"k": "v"})
    assert safetensors_io.open_file(path) == ({}, {"k": "v"})
    path2 = tmp_path / "zeros.safetensors"
    build_file(path2, {"x": ("F32", (0, 4), 0, 0), "y": ("I64", (1,), 0, 8), "z": ("U8", (0,), 8, 8)},
               np.int64(-5).tobytes())
    tensors, _ = safetensors_io.open_file(path2)
    assert tensors["x"].shape == (0, 4) and tensors["x"].tobytes() == b""
    assert tensors["y"].numpy()[0] == -5


# -- sharded directories -------------------------------------------------------------------------


def make_tensors(sizes: dict[str, int], seed: int = 0) -> dict[str, Tensor]:
    rng = np.random.default_rng(seed)
    return {name: Tensor.from_numpy(rng.integers(0, 256, size=n, dtype=np.uint8)) for name, n in sizes.items()}


def test_write_sharded_names_index_and_plan(tmp_path):
    tensors = make_tensors({"a.w": 400, "b.w": 400, "c.w": 400, "big.w": 2000, "e.w": 100, "f.w": 300})
    out = tmp_path / "sharded"
    out.mkdir()
    weight_map, sums = safetensors_io.write_sharded(out, tensors, max_shard_size=1000, metadata={"format": "pt"},
                                                    checksums=True)
    names = [f"model-{i:05d}-of-00004.safetensors" for i in range(1, 5)]
    assert sorted(p.name for p in out.iterdir()) == sorted(names + ["model.safetensors.index.json"])
    assert weight_map == {"a.w": names[0], "b.w": names[0], "c.w": names[1], "big.w": names[2],
                          "e.w": names[3], "f.w": names[3]}
    assert list(safetensors_io.open_file(out / names[2])[0]) == ["big.w"]  # larger than the limit: alone
    for name in names:
        if name != names[2]:
            assert (out / name).stat().st_size < 1000 + 200  # data within the limit (+ header)
    text = (out / "model.safetensors.index.json").read_text()
    index = json.loads(text)
    assert text == json.dumps(index, indent=2, sort_keys=True) + "\n"
    assert list(index["weight_map"]) == sorted(tensors)
    assert index["metadata"]["total_size"] == 3600
    assert index["weight_map"] == weight_map
    assert set(sums) == set(tensors)
    for name, t in tensors.items():
        assert sums[name] == f"crc32:{zlib.crc32(t.tobytes()):08x}"
    # read back, by us and by the official library
    back, meta = safetensors_io.open_sharded(out / "model.safetensors.index.json")
    assert meta == {"total_size": 3600}
    assert set(back) == set(tensors)
    for name, t in tensors.items():
        assert back[name].tobytes() == t.tobytes()
        assert back[name].file_range.path.name == weight_map[name]
    for name in names:
        with safetensors.safe_open(out / name, framework="numpy") as f:
            assert f.metadata() == {"format": "pt"}
            for key in f.keys():
                assert f.get_tensor(key).tobytes() == tensors[key].tobytes()


def test_write_sharded_single_shard(tmp_path):
    tensors = make_tensors({"a": 10, "b": 20})
    weight_map, sums = safetensors_io.write_sharded(tmp_path, tensors, "5GB")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    assert weight_map == {"a": "model.safetensors", "b": "model.safetensors"}
    assert sums == {}
    sub = tmp_path / "with-index"
    sub.mkdir()
    safetensors_io.write_sharded(sub, tensors, "5GB", index=True, prefix="weights")
    assert sorted(p.name for p in sub.iterdir()) == ["weights.safetensors", "weights.safetensors.index.json"]
    assert safetensors_io.find_index(sub) == sub / "weights.safetensors.index.json"
    back, _ = safetensors_io.open_sharded(sub / "weights.safetensors.index.json")
    assert {k: v.tobytes() for k, v in back.items()} == {k: v.tobytes() for k, v in tensors.items()}


def write_index(directory, weight_map: dict, metadata=None, name="model.safetensors.index.json"):
    path = directory / name
    path.write_text(json.dumps({"metadata": metadata or {}, "weight_map": weight_map}))
    return path


def test_open_sharded_follows_the_weight_map_whatever_the_names(tmp_path):
    tensors = make_tensors({"x": 5, "y": 6, "z": 7, "w": 8})
    files = {"x": "model-00001-00004.safetensors", "y": "model-00002-00004.safetensors",
             "z": "model-00002-00004.safetensors", "w": "weird name (final).safetensors"}
    for file in set(files.values()):
        safetensors_io.write_file(tmp_path / file, {n: tensors[n] for n, f in files.items() if f == file})
    index = write_index(tmp_path, files, {"total_size": 26})
    back, meta = safetensors_io.open_sharded(index)
    assert meta == {"total_size": 26}
    assert list(back) == list(files)
    for name, t in tensors.items():
        assert back[name].tobytes() == t.tobytes()
        assert back[name].file_range.path == tmp_path / files[name]


def test_open_sharded_refuses_disagreements_with_the_index(tmp_path):
    tensors = make_tensors({"x": 5, "y": 6})
    safetensors_io.write_file(tmp_path / "a.safetensors", tensors)
    with pytest.raises(CorruptInput, match="'y' is not in the index"):
        safetensors_io.open_sharded(write_index(tmp_path, {"x": "a.safetensors"}))
    with pytest.raises(CorruptInput, match="no such tensor"):
        safetensors_io.open_sharded(write_index(tmp_path, {"x": "a.safetensors", "y": "a.safetensors",
                                                           "q": "a.safetensors"}))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CorruptInput):
        safetensors_io.read_index(tmp_path / "bad.json")
    (tmp_path / "nomap.json").write_text('{"metadata": {}}')
    with pytest.raises(CorruptInput, match="weight_map"):
        safetensors_io.read_index(tmp_path / "nomap.json")
    with pytest.raises(NotFound):
        safetensors_io.read_index(tmp_path / "absent.json")


@pytest.mark.parametrize("shard", [
    "../model.safetensors",
    "..",
    ".",
    "",
    "sub/model.safetensors",
    "sub\\model.safetensors",
    "/etc/passwd",
    "ABSOLUTE",
    "nul\0.safetensors",
    5,
    None,
    ["model.safetensors"],
    {"a": 1},
])
def test_unsafe_shard_names_are_refused(tmp_path, shard):
    outside = tmp_path / "outside"
    inside = tmp_path / "model"
    (inside / "sub").mkdir(parents=True)
    outside.mkdir()
    for d in (outside, inside, inside / "sub"):
        safetensors_io.write_file(d / "model.safetensors", make_tensors({"x": 4}))
    if shard == "ABSOLUTE":
        shard = str(outside / "model.safetensors")
    index = write_index(inside, {"x": shard})
    with pytest.raises(UnsafeInput):
        safetensors_io.open_sharded(index)


def test_symlinks_out_of_the_directory_are_refused(tmp_path):
    outside = tmp_path / "outside"
    inside = tmp_path / "model"
    outside.mkdir()
    (inside / "sub").mkdir(parents=True)
    safetensors_io.write_file(outside / "real.safetensors", make_tensors({"x": 4}))
    safetensors_io.write_file(inside / "sub" / "deep.safetensors", make_tensors({"x": 4}))
    safetensors_io.write_file(inside / "here.safetensors", make_tensors({"x": 4}))
    (inside / "link.safetensors").symlink_to(outside / "real.safetensors")
    (inside / "rel.safetensors").symlink_to("../outside/real.safetensors")
    (inside / "down.safetensors").symlink_to("sub/deep.safetensors")
    (inside / "chain.safetensors").symlink_to("link.safetensors")  # same directory, but leads out
    (inside / "ok.safetensors").symlink_to("here.safetensors")
    for name in ("link.safetensors", "rel.safetensors", "down.safetensors", "chain.safetensors"):
        with pytest.raises(UnsafeInput, match="link out"):
            safetensors_io.open_sharded(write_index(inside, {"x": name}))
    back, _ = safetensors_io.open_sharded(write_index(inside, {"x": "ok.safetensors"}))
    assert back["x"].tobytes() == make_tensors({"x": 4})["x"].tobytes()


def test_hugging_face_cache_snapshots_link_into_their_blobs(tmp_path):
    repo = tmp_path / "models--org--name"
    snapshot = repo / "snapshots" / "0123abc"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    safetensors_io.write_file(repo / "blobs" / "9f8e7d", make_tensors({"x": 4}))
    (snapshot / "model-00001-of-00001.safetensors").symlink_to("../../blobs/9f8e7d")
    back, _ = safetensors_io.open_sharded(write_index(snapshot, {"x": "model-00001-of-00001.safetensors"}))
    assert back["x"].tobytes() == make_tensors({"x": 4})["x"].tobytes()
    (repo / "elsewhere").mkdir()
    safetensors_io.write_file(repo / "elsewhere" / "real.safetensors", make_tensors({"x": 4}))
    (snapshot / "odd.safetensors").symlink_to("../../elsewhere/real.safetensors")
    with pytest.raises(UnsafeInput, match="link out"):
        safetensors_io.open_sharded(write_index(snapshot, {"x": "odd.safetensors"}))


def test_missing_shard_is_not_found(tmp_path):
    safetensors_io.write_file(tmp_path / "model-00001-of-00002.safetensors", make_tensors({"x": 4}))
    index = write_index(tmp_path, {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"})
    with pytest.raises(NotFound, match="model-00002-of-00002.safetensors"):
        safetensors_io.open_sharded(index)
    (tmp_path / "dangling.safetensors").symlink_to("nowhere.safetensors")
    with pytest.raises(NotFound):
        safetensors_io.open_sharded(write_index(tmp_path, {"x": "dangling.safetensors"}))


@pytest.mark.parametrize("text, expected", [
    ("5GB", 5_000_000_000),
    ("2GiB", 2 * 1024 ** 3),
    ("500MB", 500_000_000),
    ("1000", 1000),
    ("10KB", 10_000),
    ("1.5GB", 1_500_000_000),
    ("4gib", 4 * 1024 ** 3),
    (" 3 MiB ", 3 * 1024 ** 2),
    ("7B", 7),
    (1234, 1234),
])
def test_parse_size(text, expected):
    assert safetensors_io.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "5XB", "-1GB", "5 G B", "lots"])
def test_parse_size_refuses_nonsense(text):
    with pytest.raises(UsageError, match="not a size"):
        safetensors_io.parse_size(text)


# -- writing: the copy path, mixes and checksums ---------------------------------------------------


def test_copying_file_ranges_reproduces_the_file(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    src_tensors = {f"layer{i}.w": Tensor.from_numpy(rng.integers(0, 1 << 16, size=(n, 17), dtype=np.uint16), "BF16")
                   for i, n in enumerate([1, 300, 0, 77, 1000])}
    src = tmp_path / "src.safetensors"
    safetensors_io.write_file(src, src_tensors, {"format": "pt"})
    opened, metadata = safetensors_io.open_file(src)
    assert all(t.file_range is not None for t in opened.values())
    dst = tmp_path / "dst.safetensors"
    safetensors_io.write_file(dst, opened, metadata)
    assert dst.read_bytes() == src.read_bytes()
    # many small kernel copies per tensor: the loop over steps keeps offsets right
    monkeypatch.setattr(safetensors_io, "CHUNK_SIZE", 4093)
    dst2 = tmp_path / "dst2.safetensors"
    sums = safetensors_io.write_file(dst2, opened, metadata, checksums=True)
    assert dst2.read_bytes() == src.read_bytes()
    for name, t in src_tensors.items():
        assert sums[name] == f"crc32:{zlib.crc32(t.tobytes()):08x}" == safetensors_io.crc32_of(opened[name])


def test_a_mix_of_file_ranges_and_memory_tensors(tmp_path):
    """File ranges go kernel-side, the rest through write(): they must interleave exactly."""
    rng = np.random.default_rng(4)
    source_arrays = {f"s{i}": rng.integers(0, 256, size=n, dtype=np.uint8) for i, n in enumerate([13, 1, 4096, 0, 999])}
    src = tmp_path / "src.safetensors"
    safetensors_io.write_file(src, {k: Tensor.from_numpy(v) for k, v in source_arrays.items()})
    from_file, _ = safetensors_io.open_file(src)
    expected: dict[str, bytes] = {}
    tensors: dict[str, Tensor] = {}
    words = rng.integers(0, 1 << 16, size=(6, 5), dtype=np.uint16)
    memory = {
        "m0": Tensor.from_numpy(rng.standard_normal(7).astype(np.float32)),
        "m1": Tensor.from_numpy(words, dtype="BF16").T,  # derived: materialised
        "m2": Tensor.from_bytes(b"abc", "U8", (3,)),
        "m3": from_file["s2"].slice(0, 5, 17),  # derived from a file range: not a range itself
        "m4": Tensor.from_loader("I16", (2,), lambda: np.array([-1, 7], np.int16)),
    }
    order = ["s0", "m0", "s1", "m1", "m2", "s2", "s3", "m3", "s4", "m4"]
    for name in order:
        t = from_file.get(name) or memory[name]
        tensors[name] = t
        expected[name] = t.tobytes()
    dst = tmp_path / "mix.safetensors"
    sums = safetensors_io.write_file(dst, tensors, {"m": "x"}, checksums=True)
    back, metadata = safetensors_io.open_file(dst)
    assert metadata == {"m": "x"}
    assert list(back) == order
    for name in order:
        assert back[name].tobytes() == expected[name], name
        assert back[name].dtype == tensors[name].dtype and back[name].shape == tensors[name].shape
        assert sums[name] == f"crc32:{zlib.crc32(expected[name]):08x}"
    with safetensors.safe_open(dst, framework="numpy") as f:  # numpy has no bfloat16: m1 aside
        assert sorted(f.keys()) == sorted(order)
        for name in order:
            if name != "m1":
                assert f.get_tensor(name).tobytes() == expected[name], name
    # and the header says exactly where each one is
    entries, _, start = safetensors_io.read_header(dst)
    data = dst.read_bytes()[start:]
    for name, (_, _, begin, end) in entries.items():
        assert data[begin:end] == expected[name]


def test_write_file_refuses_an_existing_path(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        safetensors_io.write_file(path, make_tensors({"a": 1}))
    assert path.read_bytes() == b"old"


def test_truncated_source_fails_cleanly_while_copying(tmp_path):
    src = tmp_path / "src.safetensors"
    safetensors_io.write_file(src, make_tensors({"a": 100, "b": 5000}))
    opened, _ = safetensors_io.open_file(src)
    os.truncate(src, src.stat().st_size - 1000)  # shrunk after it was opened
    with pytest.raises(CorruptInput, match="truncated"):
        safetensors_io.write_file(tmp_path / "dst.safetensors", opened)
    with pytest.raises(CorruptInput, match="truncated"):
        safetensors_io.write_file(tmp_path / "dst2.safetensors", opened, checksums=True)


def test_build_header_refuses_non_string_metadata():
    with pytest.raises(ValueError):
        safetensors_io.build_header({}, {"step": 5})


def test_a_tensor_named_like_the_metadata_key_is_refused(tmp_path):
    with pytest.raises(UsageError, match="__metadata__"):
        safetensors_io.write_file(tmp_path / "x.safetensors", {"__metadata__": Tensor.from_numpy(np.zeros(2, np.float32))})


def test_a_link_loop_is_not_found_and_loading_one_is_corrupt_input(tmp_path):
    """A shard that links to itself cannot be resolved (RuntimeError or OSError from
    ``Path.resolve``): the index names a file that is not there. A self-link opened
    directly (ELOOP) is CorruptInput, not a plugin crash."""
    import ckpt_core

    (tmp_path / "loop.safetensors").symlink_to("loop.safetensors")
    with pytest.raises(NotFound, match="a loop"):
        safetensors_io.open_sharded(write_index(tmp_path, {"x": "loop.safetensors"}))
    with pytest.raises(CorruptInput, match="link that leads to itself"):
        ckpt_core.load(tmp_path / "loop.safetensors", "safetensors")
