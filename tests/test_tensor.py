"""Lazy tensors and dtype arithmetic: every layout op moves raw words exactly.

Each op is checked on the raw words (uint16 for BF16, uint8 for FP8, uint64 for F64, uint8
for BOOL) against numpy doing the same op on the same words, for tensors built by every
constructor (numpy, bytes, a file range, a loader).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from ckpt_core import dtypes, torchfile
from ckpt_core.errors import CorruptInput
from ckpt_core.tensor import Tensor, same_bytes

LAYOUT_DTYPES = ["BF16", "F8_E4M3", "F8_E5M2", "F64", "BOOL"]
CONSTRUCTORS = ["numpy", "bytes", "file", "loader"]
_FILE_NUMBERS = itertools.count()


def random_words(dtype: str, shape, seed: int = 0) -> np.ndarray:
    """Random raw words of ``dtype`` (0/1 for BOOL, any bit pattern otherwise)."""
    rng = np.random.default_rng(seed)
    d = dtypes.get(dtype)
    if dtype == "BOOL":
        return rng.integers(0, 2, size=shape, dtype=np.uint8)
    data = rng.bytes(math.prod(shape) * d.itemsize)
    return np.frombuffer(data, dtype=d.raw).reshape(shape).copy()


def make(kind: str, words: np.ndarray, dtype: str, tmp_path) -> Tensor:
    """A tensor over ``words`` built with constructor ``kind``."""
    if kind == "numpy":
        d = dtypes.get(dtype)
        if d.numpy is not None:
            return Tensor.from_numpy(words.view(d.numpy))  # the dtype comes from numpy's
        return Tensor.from_numpy(words, dtype=dtype)
    if kind == "bytes":
        return Tensor.from_bytes(words.tobytes(), dtype, words.shape)
    if kind == "file":
        path = tmp_path / f"data-{next(_FILE_NUMBERS)}.bin"
        path.write_bytes(b"junk-before" + words.tobytes() + b"junk-after")
        return Tensor.from_file(path, len(b"junk-before"), dtype, words.shape)
    if kind == "loader":
        calls = []

        def load():
            calls.append(1)
            return words.copy()

        t = Tensor.from_loader(dtype, words.shape, load)
        assert not calls, "from_loader must not call the loader"
        return t
    raise AssertionError(kind)


def check_raw(t: Tensor, expected_words: np.ndarray) -> None:
    raw = t.raw()
    assert raw.dtype == dtypes.get(t.dtype).raw
    assert raw.shape == expected_words.shape == t.shape
    np.testing.assert_array_equal(raw, expected_words)
    assert t.tobytes() == np.ascontiguousarray(expected_words).tobytes()


# -- constructors and materialising ------------------------------------------------------


@pytest.mark.parametrize("dtype", sorted(dtypes.DTYPES))
@pytest.mark.parametrize("kind", CONSTRUCTORS)
def test_constructors_give_back_the_words(kind, dtype, tmp_path):
    words = random_words(dtype, (3, 5))
    t = make(kind, words, dtype, tmp_path)
    assert t.dtype == dtype and t.shape == (3, 5)
    assert t.numel == 15 and t.nbytes == 15 * dtypes.get(dtype).itemsize
    check_raw(t, words)
    assert (t.file_range is not None) == (kind == "file")
    if dtypes.get(dtype).numpy is not None:
        np.testing.assert_array_equal(t.numpy(), words.view(dtypes.get(dtype).numpy))
    else:
        with pytest.raises(TypeError):
            t.numpy()


def test_from_numpy_real_dtypes_and_noncontiguous():
    base = np.arange(12, dtype=np.float64).reshape(3, 4)
    t = Tensor.from_numpy(base.T)  # a non-contiguous view
    assert t.dtype == "F64" and t.shape == (4, 3)
    np.testing.assert_array_equal(t.numpy(), base.T)
    assert Tensor.from_numpy(np.array([True, False])).dtype == "BOOL"
    assert Tensor.from_numpy(np.zeros(2, np.int16)).dtype == "I16"
    assert Tensor.from_numpy(np.float32(3.5)).shape == ()
    assert Tensor.from_numpy(np.float32(3.5)).numpy() == np.float32(3.5)


def test_from_numpy_refuses_wrong_width_and_unknown_dtype():
    with pytest.raises(ValueError):
        Tensor.from_numpy(np.zeros(3, np.uint8), dtype="BF16")
    with pytest.raises(ValueError):
        Tensor.from_numpy(np.zeros(3, np.uint16), dtype="F8_E4M3")
    with pytest.raises(ValueError):
        Tensor.from_numpy(np.zeros(3, np.complex128))
    with pytest.raises((ValueError, KeyError)):
        Tensor.from_numpy(np.zeros(3, np.uint8), dtype="F4")


@pytest.mark.parametrize("shape", [(-1,), (2, -3), (2.0,), ("3",), (None,)])
def test_bad_shapes_raise(shape):
    with pytest.raises(ValueError):
        Tensor.from_bytes(b"", "F32", shape)


def test_unknown_dtype_raises():
    with pytest.raises(ValueError):
        Tensor.from_bytes(b"", "F4", (0,))
    with pytest.raises((ValueError, KeyError)):
        Tensor.from_file("x", 0, "float32", (1,))


@pytest.mark.parametrize("size", [0, 3, 5, 16])
def test_data_of_the_wrong_size_is_corrupt_input(size):
    t = Tensor.from_bytes(b"\0" * size, "F32", (2,))
    if size == 8:
        t.raw()
        return
    with pytest.raises(CorruptInput):
        t.raw()
    with pytest.raises(CorruptInput):
        Tensor.from_loader("BF16", (2, 2), lambda: np.zeros(size, np.uint8)).raw()


def test_loader_may_return_any_buffer_or_array():
    words = random_words("BF16", (2, 3))
    for value in (words.tobytes(), bytearray(words.tobytes()), memoryview(words.tobytes()),
                  words.view(np.uint8), words.reshape(-1), words.view(np.int16).T.T):
        check_raw(Tensor.from_loader("BF16", (2, 3), lambda v=value: v), words)


def test_truncated_file_is_corrupt_input(tmp_path):
    path = tmp_path / "short.bin"
    path.write_bytes(b"\1" * 10)
    t = Tensor.from_file(path, 4, "F32", (2,))  # needs bytes 4..12
    with pytest.raises(CorruptInput, match="truncated"):
        t.raw()
    with pytest.raises(CorruptInput, match="truncated"):
        b"".join(t.iter_chunks(3))


def test_nothing_is_read_until_asked(tmp_path):
    t = Tensor.from_file(tmp_path / "missing.bin", 0, "F32", (4,))  # no such file yet
    derived = t.T.reshape(2, 2).slice(0, 0, 1)
    assert derived.shape == (1, 2)
    (tmp_path / "missing.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    np.testing.assert_array_equal(derived.numpy(), [[0, 1]])


def test_repr_names_dtype_shape_and_file(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"\0" * 8)
    assert repr(Tensor.from_file(path, 4, "U16", (2,))) == "Tensor(U16, [2] @ w.bin+4)"
    assert repr(Tensor.from_bytes(b"", "BF16", (0, 3))) == "Tensor(BF16, [0, 3])"


# -- lazy layout ops: exact on raw words ------------------------------------------------------


@pytest.mark.parametrize("dtype", LAYOUT_DTYPES)
@pytest.mark.parametrize("kind", CONSTRUCTORS)
def test_transpose_and_T(kind, dtype, tmp_path):
    words = random_words(dtype, (2, 3, 4), seed=1)
    t = make(kind, words, dtype, tmp_path)
    check_raw(t.transpose(), words.transpose())
    check_raw(t.T, words.T)
    check_raw(t.transpose(1, 0, 2), words.transpose(1, 0, 2))
    check_raw(t.transpose(2, 0, 1), words.transpose(2, 0, 1))
    assert t.transpose().file_range is None  # moved bytes: not a file range any more
    check_raw(t.T.T, words)
    m = make(kind, random_words(dtype, (3, 7), seed=2), dtype, tmp_path)
    check_raw(m.T, m.raw().T)


@pytest.mark.parametrize("dtype", LAYOUT_DTYPES)
@pytest.mark.parametrize("kind", CONSTRUCTORS)
def test_reshape(kind, dtype, tmp_path):
    words = random_words(dtype, (2, 3, 4), seed=3)
    t = make(kind, words, dtype, tmp_path)
    check_raw(t.reshape(6, 4), words.reshape(6, 4))
    check_raw(t.reshape((4, 6)), words.reshape(4, 6))
    check_raw(t.reshape([24]), words.reshape(24))
    check_raw(t.reshape(-1), words.reshape(-1))
    check_raw(t.reshape(3, -1), words.reshape(3, -1))
    check_raw(t.reshape(-1, 2, 2), words.reshape(-1, 2, 2))
    check_raw(t.reshape(np.int64(8), 3), words.reshape(8, 3))
    assert t.reshape(2, 3, 4) is t
    # the same bytes in the same order: a file range stays a file range
    assert t.reshape(-1).file_range == t.file_range
    for bad in [(5, 5), (-1, 5), (-1, -1, 6), (0, -1)]:
        with pytest.raises(ValueError):
            t.reshape(*bad)
        with pytest.raises(ValueError):
            words.reshape(*bad)  # numpy refuses them too
    with pytest.raises(ValueError):
        t.reshape(-2, 12)  # stricter than numpy, which reads any negative as "infer"


@pytest.mark.parametrize("dtype", LAYOUT_DTYPES)
@pytest.mark.parametrize("kind", CONSTRUCTORS)
def test_empty_tensors(kind, dtype, tmp_path):
    words = random_words(dtype, (2, 0, 3))
    t = make(kind, words, dtype, tmp_path)
    assert t.nbytes == 0
    check_raw(t, words)
    check_raw(t.reshape(-1), words.reshape(-1))
    check_raw(t.reshape(0, 5), words.reshape(0, 5))
    check_raw(t.reshape(-1, 6), words.reshape(-1, 6))
    check_raw(t.T, words.T)
    check_raw(t.slice(0, 1, 2), words[1:2])
    check_raw(t.slice(2, 1, 1), words[:, :, 1:1])
    check_raw(Tensor.stack([t, t]), np.stack([words, words]))
    check_raw(Tensor.concat([t, t], axis=1), np.concatenate([words, words], axis=1))
    for bad in [(0, -1), (-1, 0)]:
        with pytest.raises(ValueError):
            t.reshape(*bad)
        with pytest.raises(ValueError):
            words.reshape(*bad)
    assert b"".join(t.iter_chunks(1)) == b""


@pytest.mark.parametrize("dtype", LAYOUT_DTYPES)
@pytest.mark.parametrize("kind", CONSTRUCTORS)
def test_slice_and_split(kind, dtype, tmp_path):
    words = random_words(dtype, (6, 5, 4), seed=4)
    t = make(kind, words, dtype, tmp_path)
    check_raw(t.slice(0, 1, 4), words[1:4])
    check_raw(t.slice(1, 2, 5), words[:, 2:5])
    check_raw(t.slice(2, 0, 1), words[:, :, 0:1])
    check_raw(t.slice(-1, 1, 3), words[..., 1:3])
    check_raw(t.slice(0, 3, 3), words[3:3])
    check_raw(t.slice(0, 0, 6), words)
    for bad in [(0, 4, 2), (0, -1, 2), (1, 0, 6)]:
        with pytest.raises(ValueError):
            t.slice(*bad)
    parts = t.split(0, [2, 1, 3])
    for got, want in zip(parts, np.split(words, [2, 3], axis=0)):
        check_raw(got, want)
    parts = t.split(1, [1, 0, 4])
    for got, want in zip(parts, np.split(words, [1, 1], axis=1)):
        check_raw(got, want)
    with pytest.raises(ValueError):
        t.split(0, [2, 2])
    # the q, k, v split of a fused [3*d, d] weight
    qkv = make(kind, random_words(dtype, (12, 4), seed=5), dtype, tmp_path)
    q, k, v = qkv.split(0, [4, 4, 4])
    check_raw(Tensor.concat([q, k, v]), qkv.raw())


@pytest.mark.parametrize("dtype", LAYOUT_DTYPES)
@pytest.mark.parametrize("kind", CONSTRUCTORS)
def test_stack_and_concat(kind, dtype, tmp_path):
    ws = [random_words(dtype, (3, 4), seed=10 + i) for i in range(3)]
    ts = [make(kind, w, dtype, tmp_path) for w in ws]
    for axis in (0, 1, 2, -1, -3):
        check_raw(Tensor.stack(ts, axis=axis), np.stack(ws, axis=axis))
    for axis in (0, 1, -1):
        check_raw(Tensor.concat(ts, axis=axis), np.concatenate(ws, axis=axis))
    wide = random_words(dtype, (3, 7), seed=20)
    mixed = Tensor.concat([ts[0], make(kind, wide, dtype, tmp_path)], axis=1)
    check_raw(mixed, np.concatenate([ws[0], wide], axis=1))
    with pytest.raises(ValueError):
        Tensor.concat([ts[0], make(kind, wide, dtype, tmp_path)], axis=0)
    with pytest.raises(ValueError):
        Tensor.stack([ts[0], make(kind, wide, dtype, tmp_path)])
    with pytest.raises(ValueError):
        Tensor.stack([])
    with pytest.raises(ValueError):
        Tensor.concat([])
    other = "U8" if dtypes.get(dtype).itemsize == 1 and dtype != "U8" else "I16"
    odd = Tensor.from_bytes(b"\0" * (12 * dtypes.get(other).itemsize), other, (3, 4))
    with pytest.raises(ValueError):
        Tensor.stack([ts[0], odd])
    with pytest.raises(ValueError):
        Tensor.concat([ts[0], odd])


@pytest.mark.parametrize("kind", CONSTRUCTORS)
def test_reinterpret(kind, tmp_path):
    words = random_words("BF16", (4, 2), seed=6)
    t = make(kind, words, "BF16", tmp_path)
    for other in ("U16", "I16", "F16"):
        r = t.reinterpret(other)
        assert r.dtype == other and r.file_range == t.file_range
        check_raw(r, words)
        check_raw(r.reinterpret("BF16"), words)
    np.testing.assert_array_equal(t.reinterpret("F16").numpy(), words.view(np.float16))
    with pytest.raises(ValueError):
        t.reinterpret("F32")
    f8 = make(kind, random_words("F8_E4M3", (3, 3), seed=7), "F8_E4M3", tmp_path)
    check_raw(f8.reinterpret("U8"), f8.raw())
    check_raw(f8.reinterpret("F8_E5M2"), f8.raw())
    with pytest.raises(ValueError):
        f8.reinterpret("BF16")


@pytest.mark.parametrize("dtype", ["F64", "BOOL"])
def test_ops_agree_with_numpy_values(dtype, tmp_path):
    """For dtypes numpy has, the values (not only the words) follow numpy."""
    words = random_words(dtype, (4, 6), seed=8)
    values = words.view(dtypes.get(dtype).numpy)
    t = make("file", words, dtype, tmp_path)
    cases = [
        (t.T, values.T),
        (t.reshape(3, 8), values.reshape(3, 8)),
        (t.slice(1, 2, 5), values[:, 2:5]),
        (Tensor.stack([t, t.slice(0, 0, 4)], axis=1), np.stack([values, values], axis=1)),
        (Tensor.concat([t, t.T.T], axis=0), np.concatenate([values, values])),
    ]
    for got, want in cases:
        np.testing.assert_array_equal(got.numpy(), want)  # NaN == NaN here by position
        assert got.numpy().tobytes() == np.ascontiguousarray(want).tobytes()


def test_chained_ops_on_bf16_never_touch_float(tmp_path):
    """NaN payloads and signalling NaNs survive: proof that no float conversion happens."""
    special = np.array([0x7F81, 0xFF81, 0x7FC1, 0x0001, 0x8000, 0x7F80, 0xFFFF, 0x7FBF], dtype=np.uint16)
    words = np.tile(special, 3).reshape(3, 8)
    t = make("file", words, "BF16", tmp_path)
    out = Tensor.concat(t.T.reshape(2, 4, 3).transpose(1, 0, 2).reshape(4, 6).split(1, [2, 4]), axis=1)
    check_raw(out, words.T.reshape(2, 4, 3).transpose(1, 0, 2).reshape(4, 6))


def test_same_bytes():
    a = Tensor.from_numpy(np.arange(4, dtype=np.uint16), dtype="BF16")
    assert same_bytes(a, a.reshape(2, 2).reshape(4))
    assert not same_bytes(a, a.reinterpret("U16"))
    assert not same_bytes(a, a.reshape(2, 2))
    assert not same_bytes(a, Tensor.from_numpy(np.arange(1, 5, dtype=np.uint16), dtype="BF16"))


# -- chunked streaming -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", CONSTRUCTORS)
@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 159, 160, 161, 10_000])
def test_iter_chunks_reassembles(kind, chunk, tmp_path):
    words = random_words("BF16", (8, 10), seed=9)  # 160 bytes
    t = make(kind, words, "BF16", tmp_path)
    chunks = list(t.iter_chunks(chunk))
    assert all(0 < len(c) <= chunk for c in chunks)
    assert len(chunks) == math.ceil(160 / chunk)
    assert b"".join(bytes(c) for c in chunks) == words.tobytes()
    derived = t.T.slice(0, 1, 9)
    assert b"".join(derived.iter_chunks(chunk)) == np.ascontiguousarray(words.T[1:9]).tobytes()


# -- dtype arithmetic ------------------------------------------------------------------------------


def f32(bits: int) -> np.ndarray:
    return np.array([bits], dtype=np.uint32).view(np.float32)


@pytest.mark.parametrize("bits, expected", [
    (0x3F800000, 0x3F80),  # 1.0
    (0x3F807FFF, 0x3F80),  # just below half an ulp: down
    (0x3F808000, 0x3F80),  # exactly half, even below: stays
    (0x3F808001, 0x3F81),  # just above half: up
    (0x3F818000, 0x3F82),  # exactly half, odd below: up to even
    (0x3F81FFFF, 0x3F82),
    (0xBF818000, 0xBF82),  # negative: same, by magnitude
    (0x40490FDB, 0x4049),  # pi -> 3.140625
    (0x3DCCCCCD, 0x3DCD),  # 0.1 -> rounds up
    (0x7F7FFFFF, 0x7F80),  # largest float rounds to inf (as torch does)
    (0x7F7F7FFF, 0x7F7F),  # largest bf16 stays
    (0x7F800000, 0x7F80),  # inf
    (0xFF800000, 0xFF80),  # -inf
    (0x80000000, 0x8000),  # -0.0
    (0x00000000, 0x0000),
    (0x00008000, 0x0000),  # subnormal tie to even (0)
    (0x00018000, 0x0002),  # subnormal tie to even (2)
    (0x00010001, 0x0001),
])
def test_bf16_rounds_to_nearest_even(bits, expected):
    assert int(dtypes.from_float32(f32(bits), "BF16")[0]) == expected


def test_bf16_nan_stays_nan():
    for bits in (0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FFFFFFF, 0xFF800001):
        word = int(dtypes.from_float32(f32(bits), "BF16")[0])
        assert word & 0x7F80 == 0x7F80 and word & 0x7F, hex(word)
        assert word & 0x8000 == (bits >> 16) & 0x8000  # sign kept


def test_bf16_round_trip_is_exact_for_every_word():
    words = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    values = dtypes.to_float32(words, "BF16")
    assert values.dtype == np.float32
    np.testing.assert_array_equal(values.view(np.uint32), words.astype(np.uint32) << 16)
    back = dtypes.from_float32(values, "BF16")
    nan = np.isnan(values)
    np.testing.assert_array_equal(back[~nan], words[~nan])
    assert np.isnan(dtypes.to_float32(back[nan], "BF16")).all()


def test_bf16_to_float32_spot_values():
    words = np.array([0x3F80, 0xC000, 0x7F80, 0xFF80, 0x0000, 0x8000, 0x4049], dtype=np.uint16)
    values = dtypes.to_float32(words, "BF16")
    np.testing.assert_array_equal(values[:6], [1.0, -2.0, np.inf, -np.inf, 0.0, -0.0])
    assert np.signbit(values[5])
    assert values[6] == np.float32(3.140625)


def test_bf16_rounding_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    bits = rng.integers(0, 1 << 32, size=200_000, dtype=np.uint64).astype(np.uint32)
    low = rng.integers(0, 1 << 16, size=2_000, dtype=np.uint64).astype(np.uint32)
    ties = (low << 16) | 0x8000  # exact halfway cases of every kind
    values = np.concatenate([bits, ties, low, [0x7F7FFFFF, 0xFF7FFFFF, 0x00008000]]).astype(np.uint32).view(np.float32)
    ours = dtypes.from_float32(values, "BF16")
    theirs = torch.from_numpy(values.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    nan = np.isnan(values)
    np.testing.assert_array_equal(ours[~nan], theirs[~nan])
    back = torch.from_numpy(ours.view(np.int16).copy()).view(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(dtypes.to_float32(ours, "BF16").view(np.uint32), back.view(np.uint32))


@pytest.mark.parametrize("dtype, code, value", [
    ("F8_E4M3", 0x38, 1.0),
    ("F8_E4M3", 0x7E, 448.0),
    ("F8_E4M3", 0xFE, -448.0),
    ("F8_E4M3", 0x40, 2.0),
    ("F8_E4M3", 0x3C, 1.5),
    ("F8_E4M3", 0x08, 2.0 ** -6),  # smallest normal
    ("F8_E4M3", 0x01, 2.0 ** -9),  # smallest subnormal
    ("F8_E4M3", 0x00, 0.0),
    ("F8_E4M3", 0x78, 256.0),  # E4M3FN: exponent 15 is normal, no inf
    ("F8_E5M2", 0x3C, 1.0),
    ("F8_E5M2", 0x7B, 57344.0),
    ("F8_E5M2", 0x04, 2.0 ** -14),
    ("F8_E5M2", 0x01, 2.0 ** -16),
    ("F8_E5M2", 0x7C, np.inf),
    ("F8_E5M2", 0xFC, -np.inf),
])
def test_fp8_decode_spot_values(dtype, code, value):
    assert dtypes.to_float32(np.array([code], np.uint8), dtype)[0] == np.float32(value)


def test_fp8_nan_codes_and_signed_zero():
    e4 = dtypes.to_float32(np.arange(256, dtype=np.uint8), "F8_E4M3")
    assert e4.dtype == np.float32
    assert sorted(np.flatnonzero(np.isnan(e4))) == [0x7F, 0xFF]
    assert not np.isinf(e4).any()
    e5 = dtypes.to_float32(np.arange(256, dtype=np.uint8), "F8_E5M2")
    assert sorted(np.flatnonzero(np.isnan(e5))) == [0x7D, 0x7E, 0x7F, 0xFD, 0xFE, 0xFF]
    assert sorted(np.flatnonzero(np.isinf(e5))) == [0x7C, 0xFC]
    for table in (e4, e5):
        assert table[0x80] == 0 and np.signbit(table[0x80])
        finite = np.isfinite(table)
        np.testing.assert_array_equal(table[0x80:][finite[0x80:]], -table[:0x80][finite[:0x80]])


def test_fp8_tables_match_torch():
    torch = pytest.importorskip("torch")
    codes = np.arange(256, dtype=np.uint8)
    for dtype, tdtype in (("F8_E4M3", torch.float8_e4m3fn), ("F8_E5M2", torch.float8_e5m2)):
        theirs = torch.from_numpy(codes.copy()).view(tdtype).float().numpy()
        ours = dtypes.to_float32(codes, dtype)
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
        ok = ~np.isnan(ours)
        np.testing.assert_array_equal(ours[ok].view(np.uint32), theirs[ok].view(np.uint32))


def test_float32_of_other_dtypes_and_refusals():
    np.testing.assert_array_equal(dtypes.to_float32(np.array([1, 2], np.uint16).view(np.uint16), "U16"), [1, 2])
    half = np.array([1.5, -2.0], np.float16)
    np.testing.assert_array_equal(dtypes.to_float32(half.view(np.uint16), "F16"), [1.5, -2.0])
    with np.errstate(over="ignore"):
        half_words = dtypes.from_float32(np.array([1.5, 65504.0, 1e6], np.float32), "F16")
    np.testing.assert_array_equal(half_words.view(np.float16), np.array([1.5, 65504.0, np.inf], np.float16))
    np.testing.assert_array_equal(dtypes.from_float32(np.array([0.1], np.float32), "F64").view(np.float64),
                                  [np.float64(np.float32(0.1))])
    with pytest.raises(ValueError):
        dtypes.from_float32(np.array([1.0], np.float32), "F8_E4M3")
    t = Tensor.from_numpy(np.array([0x38, 0x7E], np.uint8), dtype="F8_E4M3")
    np.testing.assert_array_equal(t.to_float32(), [1.0, 448.0])


def test_dtype_table():
    assert {d: dtypes.get(d).itemsize for d in ("BOOL", "BF16", "F8_E5M2", "F64", "I32")} == \
        {"BOOL": 1, "BF16": 2, "F8_E5M2": 1, "F64": 8, "I32": 4}
    assert dtypes.get("BF16").raw == np.dtype("<u2")
    assert dtypes.from_numpy(np.dtype("float16")) == "F16"
    with pytest.raises(ValueError):
        dtypes.from_numpy(np.dtype("complex128"))
    with pytest.raises(KeyError):
        dtypes.get("float32")


# -- torch -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", sorted(dtypes.DTYPES))
def test_to_torch_matches_torch_dtype(dtype, tmp_path):
    torch = pytest.importorskip("torch")
    expected = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "U16": torch.uint16,
                "I16": torch.int16, "F16": torch.float16, "BF16": torch.bfloat16, "U32": torch.uint32,
                "I32": torch.int32, "F32": torch.float32, "U64": torch.uint64, "I64": torch.int64,
                "F64": torch.float64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
                "C64": torch.complex64}[dtype]
    words = random_words(dtype, (3, 4), seed=12)
    t = make("file", words, dtype, tmp_path).T
    out = torchfile.to_torch(t)
    assert out.dtype == expected and tuple(out.shape) == (4, 3)
    assert out.contiguous().view(torch.uint8).numpy().tobytes() == np.ascontiguousarray(words.T).tobytes()
    if dtype == "BF16":
        np.testing.assert_array_equal(out.float().numpy(), dtypes.to_float32(words.T, "BF16"))


def test_to_mlx_keeps_bf16_words_and_refuses_f64():
    mx = pytest.importorskip("mlx.core")
    t = Tensor.from_numpy(np.array([0x3F80, 0x4000, 0xC040], dtype=np.uint16), "BF16")
    a = t.to_mlx()
    assert a.dtype == mx.bfloat16 and a.astype(mx.float32).tolist() == [1.0, 2.0, -3.0]
    assert Tensor.from_numpy(np.arange(4, dtype=np.int32)).to_mlx().tolist() == [0, 1, 2, 3]
    with pytest.raises(TypeError, match="float64"):
        Tensor.from_numpy(np.zeros(2)).to_mlx()


def test_file_range_slices_and_rejoins_stay_file_ranges(tmp_path):
    """Splitting a fused weight of a file and re-fusing it never reads it: contiguous slices
    are sub-ranges, and pieces that fill a range end to end join back into it."""
    words = random_words("BF16", (12, 4), seed=8)
    path = tmp_path / "w.bin"
    path.write_bytes(b"\0" * 6 + words.tobytes())
    t = Tensor.from_file(path, 6, "BF16", (12, 4))
    q, k, v = t.split(0, [4, 4, 4])
    assert [p.file_range.offset for p in (q, k, v)] == [6, 6 + 32, 6 + 64] and all(p.file_range.nbytes == 32 for p in (q, k, v))
    check_raw(k, words[4:8])
    fused = Tensor.stack([q, k, v])
    assert fused.file_range == t.file_range and fused.shape == (3, 4, 4)
    check_raw(fused, words.reshape(3, 4, 4))
    assert Tensor.concat([q, k, v]).file_range == t.file_range
    inner = t.reshape(1, 12, 4).slice(1, 2, 5)  # a leading axis of one is still contiguous
    assert inner.file_range.offset == 6 + 2 * 8
    check_raw(inner, words[None, 2:5])
    assert t.slice(1, 1, 3).file_range is None  # columns are strided: computed
    check_raw(t.slice(1, 1, 3), words[:, 1:3])
    assert Tensor.stack([k, q]).file_range is None  # out of order: computed
    check_raw(Tensor.stack([k, q]), np.stack([words[4:8], words[0:4]]))
    path.write_bytes(b"\0" * 6 + words.tobytes()[:40])
    with pytest.raises(CorruptInput, match="truncated"):
        v.raw()


def test_concat_of_file_ranges_streams_part_by_part(tmp_path):
    """A concatenation along the outermost axis of ranges in different files (a ZeRO
    parameter straddling two ranks) is streamed one part at a time, never joined in memory."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(bytes(range(16)))
    b.write_bytes(bytes(range(100, 124)))
    joined = Tensor.concat([Tensor.from_file(a, 4, "U8", (8,)), Tensor.from_file(b, 0, "U8", (24,))]).reshape(8, 4)
    assert [p.file_range.path for p in joined.parts] == [a, b]
    chunks = [bytes(c) for c in joined.iter_chunks(5)]
    assert b"".join(chunks) == joined.tobytes() == bytes(range(4, 12)) + bytes(range(100, 124))
    assert max(map(len, chunks)) == 5
