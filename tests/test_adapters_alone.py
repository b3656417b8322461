"""Adapters without their base: absent tensors in the core (issue 15, item 5).

An adapter file (peft, mlx-lm adapters, moshi's ``lora.safetensors``) names the weights its
adapters attach to but does not hold them. Canonical keeps those bases as ``Tensor.absent``
(name, dtype, shape; no bytes), so adapters move between adapter formats without the base.
Whatever needs the weights themselves (merging, a format that stores full weights) is
refused before anything is written, naming ``--option base=PATH``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import ckpt_core
from ckpt_core import Adapter, BaseMissing, Checkpoint, Tensor, transforms
from ckpt_core.compare import differences
from ckpt_core.tensor import same_bytes

BASE = "blocks.0.attn.q.weight"


def adapters_alone(dtype: str = "BF16") -> Checkpoint:
    rng = np.random.default_rng(0)
    a = Tensor.from_numpy(rng.standard_normal((2, 6)).astype(np.float32))
    b = Tensor.from_numpy(rng.standard_normal((4, 2)).astype(np.float32))
    return Checkpoint(tensors={BASE: Tensor.absent(dtype, (4, 6))}, adapters={BASE: Adapter(a, b, 16.0)})


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ckpt_core", *args], capture_output=True, text=True)


def test_an_absent_tensor_has_a_shape_but_no_bytes():
    t = Tensor.absent("BF16", (4, 6))
    assert t.is_absent and t.dtype == "BF16" and t.shape == (4, 6) and "absent" in repr(t)
    with pytest.raises(BaseMissing, match="--option base=PATH"):
        t.raw()
    with pytest.raises(BaseMissing):
        next(t.iter_chunks())


def test_layout_changes_of_an_absent_tensor_stay_absent():
    t = Tensor.absent("F32", (4, 6))
    present = Tensor.from_numpy(np.zeros((2, 6), np.float32))
    for derived in (t.T, t.reshape(6, 4), t.slice(0, 1, 3), t.reinterpret("I32"), Tensor.concat([t, present]),
                    Tensor.stack([t, t]), t.split(0, [1, 3])[1]):
        assert derived.is_absent
    assert Tensor.concat([t, present]).shape == (6, 6)


def test_absent_tensors_compare_by_dtype_and_shape():
    assert same_bytes(Tensor.absent("F32", (2,)), Tensor.absent("F32", (2,)))
    assert not same_bytes(Tensor.absent("F32", (2,)), Tensor.from_numpy(np.zeros(2, np.float32)))
    assert not same_bytes(Tensor.absent("F32", (2,)), Tensor.absent("F16", (2,)))


def test_the_checkpoint_counts_no_bytes_for_absent_bases():
    ck = adapters_alone()
    assert ck.absent_names() == [BASE]
    assert ck.nbytes == (2 * 6 + 4 * 2) * 4


def test_canonical_keeps_adapters_alone_exactly(tmp_path):
    ck = adapters_alone()
    ckpt_core.save(ck, tmp_path / "out", "canonical")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["tensors"][BASE] == {"absent": True, "dtype": "BF16", "shape": [4, 6]}
    back = ckpt_core.load(tmp_path / "out")
    assert differences(ck, back) == []
    assert back.tensors[BASE].is_absent
    # the base takes no room: only the two adapter matrices are stored
    assert sum(p.stat().st_size for p in (tmp_path / "out").glob("*.safetensors")) < 400


def test_a_format_of_full_weights_refuses_before_writing(tmp_path):
    ckpt_core.save(adapters_alone(), tmp_path / "src", "canonical")
    result = cli("convert", str(tmp_path / "src"), str(tmp_path / "out.safetensors"), "--to", "safetensors")
    assert result.returncode == BaseMissing.exit_code == 13
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert BASE in result.stderr and "--option base=PATH" in result.stderr and "Nothing was written" in result.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_merging_needs_the_base(tmp_path):
    ckpt_core.save(adapters_alone(), tmp_path / "src", "canonical")
    result = cli("convert", str(tmp_path / "src"), str(tmp_path / "out"), "--to", "canonical", "--merge-adapters")
    assert result.returncode == 13, result.stderr
    assert "merging adapters needs them" in result.stderr and "--option base=PATH" in result.stderr
    assert not (tmp_path / "out").exists()
    with pytest.raises(BaseMissing):
        transforms.merge_adapters(adapters_alone())


def test_cast_keeps_an_absent_base_absent():
    cast = transforms.cast(adapters_alone("F32"), {"F32": "BF16"})
    assert cast.tensors[BASE].is_absent and cast.tensors[BASE].dtype == "BF16"
    assert cast.adapters[BASE].a.dtype == "BF16"


def test_inspect_and_diff_name_absent_tensors(tmp_path):
    ck = adapters_alone()
    ckpt_core.save(ck, tmp_path / "alone", "canonical")
    ckpt_core.save(ck.evolve(tensors={BASE: Tensor.from_bytes(bytes(48), "BF16", (4, 6))}), tmp_path / "full", "canonical")

    shown = cli("inspect", str(tmp_path / "alone"))
    assert shown.returncode == 0, shown.stderr
    assert "1 absent (adapters without their base)" in shown.stdout
    assert "absent (base not in this checkpoint)" in shown.stdout
    facts = json.loads(cli("inspect", str(tmp_path / "alone"), "--json").stdout)
    assert facts["counts"]["absent"] == 1 and facts["tensors"][0]["absent"] is True and facts["tensors"][0]["bytes"] == 0

    report = ckpt_core.diff(tmp_path / "alone", tmp_path / "full")
    row = next(r for r in report.tensors if r.name == BASE)
    assert row.status == "absent" and "absent in a" in row.detail
    assert ckpt_core.diff(tmp_path / "alone", tmp_path / "alone").identical


@pytest.mark.parametrize("entry", [
    {"absent": True, "dtype": "NOPE", "shape": [2]},
    {"absent": True, "dtype": "F32", "shape": [-1]},
    {"absent": True, "dtype": "F32"},
])
def test_a_bad_absent_entry_is_corrupt(tmp_path, entry):
    ckpt_core.save(adapters_alone(), tmp_path / "src", "canonical")
    manifest_path = tmp_path / "src" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["tensors"][BASE] = entry
    manifest_path.write_text(json.dumps(manifest))
    result = cli("inspect", str(tmp_path / "src"))
    assert result.returncode == 5 and "malformed manifest" in result.stderr and result.stderr.count("\n") == 1
