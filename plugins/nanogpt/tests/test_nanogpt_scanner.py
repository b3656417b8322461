"""Reading without torch: the scanner gives what torch.load gives, as file ranges."""

from __future__ import annotations

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from ckpt_plugin_nanogpt import reading  # noqa: E402

from ckpt_core import torchfile  # noqa: E402
from ckpt_core.torchfile import tree_from_torch  # noqa: E402


def _same(scanned, loaded, where="file"):
    """The scanner's tree equals torch.load's, tensor bytes included."""
    if isinstance(loaded, dict):
        assert isinstance(scanned, dict) and list(scanned) == list(loaded), where
        for k in loaded:
            _same(scanned[k], loaded[k], f"{where}[{k!r}]")
    elif isinstance(loaded, (list, tuple)):
        assert type(scanned) is type(loaded) and len(scanned) == len(loaded), where
        for i, (s, v) in enumerate(zip(scanned, loaded)):
            _same(s, v, f"{where}[{i}]")
    elif isinstance(loaded, torch.Tensor):
        expected = tree_from_torch(loaded)
        assert (scanned.dtype, scanned.shape) == (expected.dtype, expected.shape), where
        assert scanned.tobytes() == expected.tobytes(), where
    else:
        assert scanned == loaded, where


@pytest.mark.parametrize("name", ["nanogpt", "nanogpt_bias", "nanogpt_bare", "modded", "medium", "medium_bare"])
def test_scanner_reads_what_torch_load_reads(upstream, name):
    path = upstream[name]
    scanned = reading.load(path, "nanogpt", model_only=False)
    _same(scanned, torch.load(path, weights_only=True))
    model = scanned.get("model", scanned)
    assert all(t.file_range is not None for t in model.values() if t.numel)  # writers copy them file to file


def test_tied_keys_share_one_tensor(upstream):
    model = reading.load(upstream["nanogpt"], "nanogpt", model_only=False)["model"]
    assert model["_orig_mod.lm_head.weight"] is model["_orig_mod.transformer.wte.weight"]


def test_reading_and_converting_a_plain_checkpoint_never_imports_torch(upstream, tmp_path):
    script = (
        "import sys, ckpt_core\n"
        f"ck = ckpt_core.load({str(upstream['nanogpt'])!r})\n"
        f"ckpt_core.save(ck, {str(tmp_path / 'canon')!r}, 'canonical')\n"
        "print(ck.train_state.optimizer is not None, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]


def test_a_file_needing_other_classes_goes_through_torch_and_is_refused(upstream, tmp_path):
    import nanogpt_reference as ref

    from ckpt_core.errors import UnsafeInput

    ckpt = torch.load(upstream["nanogpt"], weights_only=True)
    ckpt["extra"] = ref.ScriptOptimizerState(str(tmp_path / "ran"), {})
    torch.save(ckpt, tmp_path / "ckpt.pt")
    assert torchfile.scan(tmp_path / "ckpt.pt").records == ("nanogpt_reference.ScriptOptimizerState",)
    with pytest.raises(UnsafeInput, match="ScriptOptimizerState"):
        reading.load(tmp_path / "ckpt.pt", "nanogpt", model_only=False)
    assert not (tmp_path / "ran").exists()
