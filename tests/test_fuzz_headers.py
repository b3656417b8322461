"""Damaged safetensors headers: every one is a CorruptInput with a clear message, nothing else.

A Hypothesis test mutates a small valid file (flipped bytes, truncation, junk, edited JSON
fields, absurd length prefixes) and checks that ``read_header`` and ``ckpt_core.load`` either
succeed (the mutation left a valid file: then every tensor reads) or raise CorruptInput, never
another exception, never a hang. Then one named case per validation rule, and the CLI.
"""

from __future__ import annotations

import json
import struct
from datetime import timedelta

import numpy as np
import pytest
from bad_input_cases import time_limit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckpt_core
from ckpt_core import safetensors_io
from ckpt_core.errors import CkptError, CorruptInput, NotFound
from ckpt_core.tensor import Tensor


def valid_parts() -> tuple[dict, bytes]:
    """The header (as a dict, in order) and data section of a small valid file."""
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([0x3F80, 0x4000, 0xC040, 0x7F80], np.uint16)
    c = np.array([1, 2, 3], np.int8)
    header = {
        "__metadata__": {"format": "pt", "step": "3"},
        "w.a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "w.b": {"dtype": "BF16", "shape": [4], "data_offsets": [24, 32]},
        "w.empty": {"dtype": "U8", "shape": [0], "data_offsets": [32, 32]},
        "w.c": {"dtype": "I8", "shape": [3], "data_offsets": [32, 35]},
    }
    return header, a.tobytes() + b.tobytes() + c.tobytes()


def encode(header, data: bytes = b"", length: int | None = None, pad: bool = True) -> bytes:
    """A file: 8-byte length, header (dict or raw text/bytes), data."""
    if isinstance(header, dict):
        text = json.dumps(header).encode()
    elif isinstance(header, str):
        text = header.encode()
    else:
        text = header
    if pad:
        text += b" " * (-(8 + len(text)) % 8)
    return struct.pack("<Q", len(text) if length is None else length) + text + data


HEADER, DATA = valid_parts()
VALID = encode(HEADER, DATA)
HEADER_END = 8 + struct.unpack("<Q", VALID[:8])[0]


def test_the_base_file_is_valid(tmp_path):
    path = tmp_path / "ok.safetensors"
    path.write_bytes(VALID)
    entries, metadata, start = safetensors_io.read_header(path)
    assert metadata == {"format": "pt", "step": "3"} and start == HEADER_END
    tensors, _ = safetensors_io.open_file(path)
    np.testing.assert_array_equal(tensors["w.a"].numpy(), np.arange(6, dtype=np.float32).reshape(2, 3))
    ckpt_core.load(path)


# -- Hypothesis -----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
offsets = st.integers(-5, 40) | st.integers(-(2 ** 64), 2 ** 64) | st.sampled_from([2 ** 63 - 1, 2 ** 64 - 1, -1])
shape_dims = st.integers(-3, 10) | st.sampled_from([2 ** 31, 2 ** 62, 2 ** 64])
dtype_names = st.sampled_from(["F32", "BF16", "F8_E4M3", "f32", "F4", "", "float32", "I128", "F8_E4M3FNUZ",
                               [], ["F32"], {"F32": 1}, None, 32, 1.5, True]) | json_values


@st.composite
def flipped(draw):
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 6))):
        where = draw(st.integers(0, HEADER_END - 1) | st.integers(0, 7) | st.integers(0, len(data) - 1))
        data[where] ^= draw(st.integers(1, 255))
    return bytes(data)


@st.composite
def truncated(draw):
    return VALID[:draw(st.integers(0, len(VALID) - 1))]


@st.composite
def junk_appended(draw):
    return VALID + draw(st.binary(min_size=1, max_size=64))


@st.composite
def length_prefix(draw):
    n = draw(st.integers(0, 2 ** 64 - 1) | st.integers(0, HEADER_END + 40) | st.sampled_from(
        [safetensors_io.MAX_HEADER, safetensors_io.MAX_HEADER + 1, 2 ** 63, 2 ** 64 - 1]))
    return struct.pack("<Q", n) + VALID[8:]


@st.composite
def edited_fields(draw):
    header = json.loads(json.dumps(HEADER))
    names = [n for n in header if n != "__metadata__"]
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(names))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "begin", "end", "drop", "extra", "whole"]))
        entry = header[name]
        if not isinstance(entry, dict):  # replaced whole by an earlier edit
            header[name] = draw(json_values)
        elif field == "dtype":
            entry["dtype"] = draw(dtype_names)
        elif field == "shape":
            entry["shape"] = draw(st.lists(shape_dims, max_size=4) | json_values)
        elif field == "data_offsets":
            entry["data_offsets"] = draw(st.lists(offsets, max_size=3) | json_values)
        elif field in ("begin", "end") and isinstance(entry, dict) and isinstance(entry.get("data_offsets"), list) \
                and len(entry["data_offsets"]) == 2:
            entry["data_offsets"][0 if field == "begin" else 1] = draw(offsets)
        elif field == "drop" and isinstance(entry, dict) and entry:
            entry.pop(draw(st.sampled_from(sorted(entry))))
        elif field == "extra" and isinstance(entry, dict):
            entry[draw(st.text(max_size=5))] = draw(json_values)
        elif field == "whole":
            header[name] = draw(json_values)
    if draw(st.booleans()):
        header["__metadata__"] = draw(json_values | st.dictionaries(st.text(max_size=4), json_values, max_size=3))
    data = DATA
    tail = draw(st.sampled_from(["same", "short", "long", "empty"]))
    if tail == "short":
        data = DATA[:-draw(st.integers(1, len(DATA)))]
    elif tail == "long":
        data = DATA + b"\0" * draw(st.integers(1, 16))
    elif tail == "empty":
        data = b""
    return encode(header, data, pad=draw(st.booleans()))


@st.composite
def duplicated_keys(draw):
    text = json.dumps(HEADER)
    name = draw(st.sampled_from(list(HEADER)))
    dup = json.dumps(name) + ": " + json.dumps(HEADER[name])
    where = draw(st.sampled_from(["start", "end"]))
    text = ("{" + dup + ", " + text[1:]) if where == "start" else (text[:-1] + ", " + dup + "}")
    return encode(text, DATA)


@st.composite
def raw_headers(draw):
    text = draw(st.binary(max_size=80) | st.text(max_size=80).map(str.encode)
                | st.sampled_from([b"{", b"}", b"[]", b"null", b"{}x", b"{\"a\":", b'{"a": NaN}', b"\xef\xbb\xbf{}",
                                   b'{"__metadata__": null}', b"{" * 5000, b" " * 100]))
    return encode(text, draw(st.sampled_from([b"", DATA])), pad=draw(st.booleans()))


mutated_files = st.one_of(flipped(), truncated(), junk_appended(), length_prefix(), edited_fields(),
                          duplicated_keys(), raw_headers())





FUZZ = settings(max_examples=400, deadline=timedelta(seconds=3),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(content=mutated_files)
def test_read_header_raises_only_corrupt_input(content, tmp_path):
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(content)
    with time_limit(5):
        try:
            entries, metadata, start = safetensors_io.read_header(path)
        except CorruptInput as e:
            assert str(path) in str(e) and "\n" not in str(e)
            return
        # accepted: then it really is consistent, and every tensor reads
        assert metadata is None or all(isinstance(v, str) for v in metadata.values())
        tensors, _ = safetensors_io.open_file(path)
        size = len(content)
        for name, (dtype, shape, begin, end) in entries.items():
            assert 0 <= begin <= end and start + end <= size
            assert tensors[name].nbytes == end - begin
            assert tensors[name].tobytes() == content[start + begin:start + end]


@FUZZ
@given(content=mutated_files)
def test_load_raises_only_corrupt_input(content, tmp_path):
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(content)
    with time_limit(5):
        try:
            ck = ckpt_core.load(path)
        except CorruptInput:
            return
        except CkptError as e:
            pytest.fail(f"{type(e).__name__} where CorruptInput was expected: {e}")
        for t in ck.tensors.values():
            t.tobytes()


# -- one named case per rule --------------------------------------------------------------------------


def edited(**changes) -> dict:
    """HEADER with entries replaced (``w__a`` stands for ``w.a``; ``__metadata__`` as is)."""
    header = json.loads(json.dumps(HEADER))
    for name, value in changes.items():
        if name != "__metadata__":
            name = name.replace("__", ".")
        if value is None:
            header.pop(name)
        else:
            header[name] = value
    return header


def entry(dtype="F32", shape=(2, 3), offsets=(0, 24)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


CASES = {
    "empty file": (b"", "too short for a header"),
    "seven bytes": (b"\x08\0\0\0\0\0\0", "too short for a header"),
    "huge header length": (encode(HEADER, DATA, length=2 ** 64 - 1), "exceeds the 100000000-byte limit"),
    "header length over the bound": (encode(HEADER, DATA, length=safetensors_io.MAX_HEADER + 1), "exceeds"),
    "header length past the end": (encode(HEADER, DATA, length=len(VALID)), "runs past the end"),
    "header not utf-8": (encode(b"{\"\xff\xfe\": 1}"), "not UTF-8"),
    "header a JSON array": (encode("[1, 2]"), "not a JSON object"),
    "header JSON null": (encode("null"), "not a JSON object"),
    "header not JSON": (encode("{not json"), "not valid JSON"),
    "header JSON with trailing junk": (encode('{} {}'), "not valid JSON"),
    "header absurdly deep": (encode('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"), "not valid JSON"),
    "duplicate tensor": (encode('{"x": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, '
                                '"x": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}', b"\1"), "duplicate key 'x'"),
    "duplicate inside an entry": (encode('{"x": {"dtype": "U8", "dtype": "I8", "shape": [1], "data_offsets": [0, 1]}}',
                                         b"\1"), "duplicate key 'dtype'"),
    "metadata a list": (encode(edited(__metadata__=["a"]), DATA), "__metadata__ must map strings to strings"),
    "metadata a string": (encode(edited(__metadata__="a"), DATA), "__metadata__ must map strings to strings"),
    "metadata int value": (encode(edited(__metadata__={"step": 3}), DATA), "__metadata__ must map strings to strings"),
    "metadata null value": (encode(edited(__metadata__={"step": None}), DATA), "__metadata__ must map strings"),
    "entry not an object": (encode(edited(w__a=[0, 24]), DATA), "needs exactly dtype, shape and data_offsets"),
    "entry missing shape": (encode(edited(w__a={"dtype": "F32", "data_offsets": [0, 24]}), DATA), "needs exactly"),
    "entry with extra field": (encode(edited(w__a={**entry(), "x": 1}), DATA), "needs exactly"),
    "unknown dtype": (encode(edited(w__a=entry(dtype="F128")), DATA), "unknown dtype 'F128'"),
    "lowercase dtype": (encode(edited(w__a=entry(dtype="f32")), DATA), "unknown dtype 'f32'"),
    "dtype a list": (encode(edited(w__a=entry(dtype=["F32"])), DATA), "unknown dtype"),
    "dtype an object": (encode(edited(w__a=entry(dtype={"a": 1})), DATA), "unknown dtype"),
    "dtype null": (encode(edited(w__a=entry(dtype=None)), DATA), "unknown dtype"),
    "negative dim": (encode(edited(w__a=entry(shape=(-2, -3))), DATA), "bad shape"),
    "float dim": (encode(edited(w__a=entry(shape=(2.0, 3))), DATA), "bad shape"),
    "bool dim": (encode(edited(w__a=entry(shape=(True, 6))), DATA), "bad shape"),
    "shape a string": (encode(edited(w__a={"dtype": "F32", "shape": "2,3", "data_offsets": [0, 24]}), DATA), "bad shape"),
    "offsets one number": (encode(edited(w__a={"dtype": "F32", "shape": [2, 3], "data_offsets": 24}), DATA), "bad data_offsets"),
    "three offsets": (encode(edited(w__a=entry(offsets=(0, 12, 24))), DATA), "bad data_offsets"),
    "float offsets": (encode(edited(w__a=entry(offsets=(0.0, 24))), DATA), "bad data_offsets"),
    "bool offsets": (encode(edited(w__a=entry(offsets=(False, 24))), DATA), "bad data_offsets"),
    "negative begin": (encode(edited(w__a=entry(offsets=(-24, 0))), DATA), "lies outside"),
    "end before begin": (encode(edited(w__a=entry(offsets=(24, 0))), DATA), "lies outside"),
    "end past the data": (encode(edited(w__c=entry("I8", (3,), (32, 36))), DATA), "lies outside"),
    "huge end": (encode(edited(w__c=entry("I8", (3,), (32, 2 ** 64))), DATA), "lies outside"),
    "size differs from shape": (encode(edited(w__a=entry(shape=(2, 2))), DATA), "has 24 bytes, F32 [2, 2] needs 16"),
    "huge shape": (encode(edited(w__a=entry(shape=(2 ** 62, 2 ** 62))), DATA), "needs"),
    "overlap": (encode(edited(w__b=entry("BF16", (4,), (20, 28)), w__c=entry("I8", (7,), (28, 35))), DATA), "overlaps"),
    "zero-size inside another": (encode(edited(w__empty=entry("U8", (0,), (4, 4))), DATA), "overlaps"),
    "gap": (encode(edited(w__b=entry("BF16", (2,), (24, 28))), DATA), "belong to no tensor"),
    "gap at the start": (encode({"x": entry("U8", (1,), (1, 2))}, b"\0\0"), "1 bytes before tensor 'x' belong to no tensor"),
    "trailing bytes": (encode(HEADER, DATA + b"\0"), "data section is 36 bytes but the tensors cover 35"),
    "truncated data": (encode(HEADER, DATA[:-1]), "lies outside"),
    "no data at all": (encode(HEADER, b""), "lies outside"),
    "data with no tensors": (encode({}, b"\0" * 8), "data section is 8 bytes but the tensors cover 0"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_rule_names_the_problem(tmp_path, name):
    content, fragment = CASES[name]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CorruptInput) as info:
        safetensors_io.read_header(path)
    message = str(info.value)
    assert fragment in message
    assert message.startswith(str(path)) and "\n" not in message
    with pytest.raises(CorruptInput):
        ckpt_core.load(path)


def test_a_directory_and_a_missing_file(tmp_path):
    with pytest.raises(CorruptInput, match="is a directory"):
        safetensors_io.read_header(tmp_path)
    with pytest.raises(NotFound, match="no such file"):
        safetensors_io.read_header(tmp_path / "absent.safetensors")


def test_accepted_quirks_are_not_errors(tmp_path):
    """What real writers do must not be refused: null metadata, no padding, any key order,
    zero-size tensors anywhere between others, an empty header."""
    header = {"__metadata__": None, "z": entry("U8", (2,), (3, 5)), "y": entry("U8", (0,), (3, 3)),
              "x": entry("U8", (3,), (0, 3))}
    for content in (encode(header, b"abcde", pad=False), encode({}, b""), encode(" {} ", b"", pad=False)):
        path = tmp_path / "quirks.safetensors"
        path.write_bytes(content)
        safetensors_io.read_header(path)
    tensors, metadata = safetensors_io.open_file(tmp_path / "quirks.safetensors")
    assert tensors == {} and metadata is None


def test_a_written_file_with_a_tensor_of_every_dtype_is_valid(tmp_path):
    from ckpt_core import dtypes

    tensors = {d: Tensor.from_bytes(bytes(range(3 * dtypes.get(d).itemsize)), d, (3,)) for d in dtypes.DTYPES}
    path = tmp_path / "all.safetensors"
    safetensors_io.write_file(path, tensors)
    entries, _, _ = safetensors_io.read_header(path)
    assert {n: e[0] for n, e in entries.items()} == {d: d for d in dtypes.DTYPES}


# -- the command line ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["huge header length", "header not JSON", "unknown dtype", "overlap",
                                  "truncated data", "dtype a list"])
@pytest.mark.parametrize("command", ["inspect", "convert"])
def test_cli_exit_code_5_and_one_line(tmp_path, capsys, name, command):
    cli = pytest.importorskip("ckpt_core.cli")
    path = tmp_path / "bad.safetensors"
    path.write_bytes(CASES[name][0])
    argv = [command, str(path)] + ([str(tmp_path / "out"), "--to", "canonical"] if command == "convert" else [])
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 5
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert CASES[name][1] in lines[0] and "Traceback" not in err
    assert not (tmp_path / "out").exists()
