"""A third-party plugin, installed for the test through a real entry point: discovery,
conversion, the conformance suite run on it, and how broken or clashing plugins are
reported without breaking the others."""

from __future__ import annotations

import pytest

import ckpt_core
from ckpt_core.compare import differences
from ckpt_core.plugins import ENV_VAR, registry
from ckpt_core.testing import FormatConformance, example_checkpoint

# A whole plugin: a directory of one raw .bin file per tensor (little-endian, as
# safetensors) and an index.json with names, dtypes, shapes, family and ties.
EXAMPLE_PLUGIN = '''
import json

from ckpt_core import Arch, Checkpoint, CorruptInput, Detection, FormatSpec, LossyConversion, Tensor, hookimpl, tree

MAGIC = "ckpt-plugin-example"
SPEC = FormatSpec("example", "a directory of raw .bin tensors and index.json",
                  capabilities={"ties"}, patterns=("index.json", "*.bin"))


@hookimpl
def ckpt_formats():
    return [SPEC]


@hookimpl
def detect(path):
    try:
        index = json.loads((path / "index.json").read_text())
    except (OSError, ValueError):
        return None
    if isinstance(index, dict) and index.get("format") == MAGIC:
        return Detection("example", 1.0, "index.json says " + MAGIC, path)
    return None


@hookimpl
def to_canonical(path, format, options):
    if format != "example":
        return None
    try:
        index = json.loads((path / "index.json").read_text())
        tensors = {}
        for i, (name, dtype, shape) in enumerate(index["tensors"]):
            tensors[name] = Tensor.from_file(path / f"{i}.bin", 0, dtype, shape)
            if (path / f"{i}.bin").stat().st_size != tensors[name].nbytes:
                raise CorruptInput(f"{path / f'{i}.bin'}: not {tensors[name].nbytes} bytes (truncated?)")
        arch = Arch(index["family"], tree.decode(index["params"], {}))
        return Checkpoint(arch=arch, tensors=tensors, ties=dict(index["ties"]))
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptInput(f"{path / 'index.json'}: malformed ({type(e).__name__}: {e})") from None


@hookimpl
def from_canonical(checkpoint, path, format, options):
    if format != "example":
        return None
    params, arch_tensors = tree.encode(checkpoint.arch.params)
    if arch_tensors:
        raise LossyConversion("the example format cannot keep tensors in hyper-parameters")
    path.mkdir()
    for i, t in enumerate(checkpoint.tensors.values()):
        (path / f"{i}.bin").write_bytes(t.tobytes())
    index = {"format": MAGIC, "family": checkpoint.arch.family, "params": params, "ties": checkpoint.ties,
             "tensors": [[name, t.dtype, list(t.shape)] for name, t in checkpoint.tensors.items()]}
    (path / "index.json").write_text(json.dumps(index))
    return True
'''

BROKEN_PLUGIN = 'raise RuntimeError("this plugin is broken")\n'

# Claims the built-in "safetensors" name, and would hijack every read if it were registered.
IMPOSTOR_PLUGIN = '''
from ckpt_core import Checkpoint, FormatSpec, hookimpl


@hookimpl
def ckpt_formats():
    return [FormatSpec("safetensors", "an impostor")]


@hookimpl
def to_canonical(path, format, options):
    return Checkpoint()
'''


def install_example(install) -> None:
    install("ckpt-plugin-example", {"example_plugin": EXAMPLE_PLUGIN}, {"example": "example_plugin"})


@pytest.fixture
def example_plugin(ckpt_install_plugin, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)  # every entry point loads
    install_example(ckpt_install_plugin)


def plugin_info(name: str):
    return next(p for p in registry().plugins if p.name == name)


def test_entry_point_plugin_is_discovered(example_plugin):
    info = plugin_info("example")
    assert (info.distribution, info.version, info.formats, info.error) == ("ckpt-plugin-example", "0.1", ("example",), "")
    assert registry().formats["example"].capabilities == {"ties"}


def test_plugin_converts_to_and_from_canonical(example_plugin, ckpt_example_checkpoint, tmp_path):
    ckpt_core.save(ckpt_example_checkpoint, tmp_path / "canonical", "canonical")
    ckpt_core.convert(tmp_path / "canonical", tmp_path / "example", to="example")
    assert ckpt_core.detect(tmp_path / "example")[0].format == "example"
    ckpt_core.convert(tmp_path / "example", tmp_path / "back", to="canonical")
    assert differences(ckpt_example_checkpoint, ckpt_core.load(tmp_path / "back")) == []


@pytest.mark.usefixtures("example_plugin")
class TestExampleConformance(FormatConformance):
    format = "example"

    def make_example(self, tmp_path):
        ckpt_core.save(example_checkpoint(), tmp_path / "ckpt", "example")
        return tmp_path / "ckpt"


def test_broken_plugin_is_reported_and_builtins_work(ckpt_install_plugin, ckpt_example_checkpoint, monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    ckpt_install_plugin("ckpt-plugin-broken", {"broken_plugin": BROKEN_PLUGIN}, {"broken": "broken_plugin"})
    info = plugin_info("broken")
    assert (info.distribution, info.formats) == ("ckpt-plugin-broken", ())
    assert "RuntimeError: this plugin is broken" in info.error
    ckpt_core.save(ckpt_example_checkpoint, tmp_path / "ckpt", "canonical")
    assert differences(ckpt_example_checkpoint, ckpt_core.load(tmp_path / "ckpt")) == []


def test_plugin_claiming_a_taken_format_is_reported_and_skipped(ckpt_install_plugin, ckpt_example_checkpoint, monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    ckpt_install_plugin("ckpt-plugin-impostor", {"impostor_plugin": IMPOSTOR_PLUGIN}, {"impostor": "impostor_plugin"})
    info = plugin_info("impostor")
    assert "'safetensors'" in info.error and "already" in info.error
    assert registry().formats["safetensors"].description != "an impostor"
    assert registry().pm.get_plugin("impostor") is None
    ckpt_core.save(ckpt_example_checkpoint, tmp_path / "model.safetensors", "safetensors")
    assert differences(ckpt_example_checkpoint, ckpt_core.load(tmp_path / "model.safetensors")) == []


def test_env_var_selects_entry_points(ckpt_install_plugin, ckpt_plugins_only):
    install_example(ckpt_install_plugin)
    ckpt_install_plugin("ckpt-plugin-broken", {"broken_plugin": BROKEN_PLUGIN}, {"broken": "broken_plugin"})
    builtins = ["canonical", "safetensors", "gpt"]
    assert [p.name for p in ckpt_plugins_only().plugins] == builtins
    reg = ckpt_plugins_only("example")
    assert [p.name for p in reg.plugins] == [*builtins, "example"]
    assert not any(p.error for p in reg.plugins)
    assert "example" in reg.formats
