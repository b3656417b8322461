"""``ckpt_core.carried``: files beside the weights, carried unread and written byte for byte."""

from __future__ import annotations

import os

import pytest

from ckpt_core import CorruptInput, Tensor, UnsafeInput, carried


def test_read_and_write_carry_every_byte(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "tokenizer.json").write_bytes(os.urandom(100_000))
    (src / "config.json").write_text("{}")
    (src / "sub").mkdir()
    files = carried.read(src, lambda name: name == "config.json")
    assert list(files) == ["tokenizer.json"] and files["tokenizer.json"].file_range is not None
    carried.check(files, lambda name: name == "config.json", "files")
    carried.write(dst, {**files, "README.md": b"# model\n", "chat_template.jinja": Tensor.from_bytes(b"{{ x }}", "U8", (7,))})
    assert (dst / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    assert (dst / "README.md").read_bytes() == b"# model\n" and (dst / "chat_template.jinja").read_bytes() == b"{{ x }}"


def test_a_link_out_of_the_directory_is_refused(tmp_path):
    (tmp_path / "secret").write_text("outside")
    model = tmp_path / "model"
    model.mkdir()
    os.symlink(tmp_path / "secret", model / "tokenizer.json")
    with pytest.raises(UnsafeInput, match="link out"):
        carried.read(model, lambda name: False)


@pytest.mark.parametrize("name, error", [("../x", UnsafeInput), ("a/b", UnsafeInput), ("..", UnsafeInput), ("", UnsafeInput),
                                         ("config.json", CorruptInput)])
def test_names_that_would_leave_the_directory_or_clash_are_refused(name, error):
    with pytest.raises(error):
        carried.check({name: b"x"}, lambda n: n == "config.json", "files")


def test_what_is_not_a_file_is_refused():
    with pytest.raises(CorruptInput, match="1-d U8"):
        carried.check({"x": Tensor.from_bytes(b"\0" * 8, "F32", (2,))}, lambda n: False, "files")
