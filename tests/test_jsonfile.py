"""ckpt_core.jsonfile: small JSON files, failing in one line."""

import pytest

from ckpt_core import CorruptInput, NotFound, jsonfile


def test_objects_read_and_everything_else_fails_in_one_line(tmp_path):
    (tmp_path / "ok.json").write_text('{"a": [1, 2]}')
    assert jsonfile.read_object(tmp_path / "ok.json") == {"a": [1, 2]}
    with pytest.raises(NotFound, match="missing.json: no such file"):
        jsonfile.read_object(tmp_path / "missing.json")
    for name, data, words in (("list.json", b"[1]", "not a JSON object"), ("bad.json", b"{", "not valid JSON"),
                              ("bytes.json", b"\xff\xfe", "not valid JSON"), ("deep.json", b"[" * 100000, "not valid JSON")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CorruptInput, match=words):
            jsonfile.read_object(tmp_path / name)


def test_an_endless_or_huge_file_fails_instead_of_filling_memory(tmp_path):
    (tmp_path / "zero.json").symlink_to("/dev/zero")  # a device: refused before reading
    with pytest.raises(CorruptInput, match="is a character device, not a file"):
        jsonfile.read_object(tmp_path / "zero.json")
    with open(tmp_path / "huge.json", "wb") as f:
        f.truncate(jsonfile.MAX_BYTES + 1)  # sparse: takes no space
    with pytest.raises(CorruptInput, match="too large for a JSON file"):
        jsonfile.read_object(tmp_path / "huge.json")
