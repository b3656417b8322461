"""The README's first conversion: the shipped nanoGPT example through MLX and back."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import ckpt_core  # noqa: E402
from ckpt_core import plugins  # noqa: E402

EXAMPLES = Path(__file__).parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))


@pytest.fixture(autouse=True)
def needs_plugins():
    plugins.reset()
    missing = {"nanogpt", "mlx"} - set(plugins.registry().formats)
    if missing:
        pytest.skip(f"the README's example needs the {', '.join(sorted(missing))} plugin(s)")


def test_shipped_checkpoint_is_what_its_script_makes():
    """The shipped file has the structure its script makes, and every part but the floats
    one AdamW step computes is equal. Those floats depend on the CPU's kernels (the last bit
    differs between machines), so they are compared to rounding, not bit for bit."""
    from make_tiny_nanogpt import checkpoint

    made, shipped = checkpoint(), torch.load(EXAMPLES / "tiny-nanogpt" / "ckpt.pt", weights_only=True)
    assert list(made) == list(shipped) and list(made["model"]) == list(shipped["model"])
    assert {k: v for k, v in made.items() if k not in ("model", "optimizer", "best_val_loss")} == \
        {k: v for k, v in shipped.items() if k not in ("model", "optimizer", "best_val_loss")}
    assert torch.equal(made["best_val_loss"], shipped["best_val_loss"])
    assert made["optimizer"]["param_groups"] == shipped["optimizer"]["param_groups"]
    pairs = [(made["model"][k], shipped["model"][k]) for k in made["model"]]
    pairs += [(made["optimizer"]["state"][i][slot], v) for i, s in shipped["optimizer"]["state"].items() for slot, v in s.items()]
    assert list(made["optimizer"]["state"]) == list(shipped["optimizer"]["state"])
    for ours, theirs in pairs:
        assert (ours.dtype, ours.shape) == (theirs.dtype, theirs.shape)
        assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-9)
    tied = shipped["model"]["_orig_mod.lm_head.weight"], shipped["model"]["_orig_mod.transformer.wte.weight"]
    assert tied[0].untyped_storage().data_ptr() == tied[1].untyped_storage().data_ptr()


def test_nanogpt_example_through_mlx_and_back_is_exact(tmp_path):
    source = EXAMPLES / "tiny-nanogpt" / "ckpt.pt"
    assert ckpt_core.detect(source)[0].format == "nanogpt"
    ckpt_core.convert(source, tmp_path / "mlx", to="mlx")
    ckpt_core.convert(tmp_path / "mlx", tmp_path / "back.pt", to="nanogpt")  # the MLX files recorded the _orig_mod. prefix
    assert ckpt_core.diff(source, tmp_path / "back.pt").identical
    a = torch.load(source, weights_only=True)
    b = torch.load(tmp_path / "back.pt", weights_only=True)
    assert list(a) == list(b) and list(a["model"]) == list(b["model"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert all(torch.equal(v, b["optimizer"]["state"][i][slot]) for i, s in a["optimizer"]["state"].items() for slot, v in s.items())
    assert (a["model_args"], a["config"], a["iter_num"]) == (b["model_args"], b["config"], b["iter_num"])
    assert torch.equal(a["best_val_loss"], b["best_val_loss"])
    tied = b["model"]["_orig_mod.lm_head.weight"], b["model"]["_orig_mod.transformer.wte.weight"]
    assert tied[0].untyped_storage().data_ptr() == tied[1].untyped_storage().data_ptr()


# A Python with torch not importable: the import system refuses it, as on a laptop without it.
NO_TORCH = """
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, NoTorch())
from ckpt_core.cli import main
main(sys.argv[1:])
"""


def without_torch(*args) -> subprocess.CompletedProcess:
    """``ckpt-core ARGS`` in a fresh Python where ``import torch`` fails."""
    return subprocess.run([sys.executable, "-c", NO_TORCH, *map(str, args)], capture_output=True, text=True)


def test_the_example_goes_through_mlx_and_back_without_torch(tmp_path):
    """The plugins need torch only for what the scanner cannot read: the README's
    conversion runs where torch cannot be imported, and gives the same dict back."""
    source = EXAMPLES / "tiny-nanogpt" / "ckpt.pt"
    listed = without_torch("plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    plugins_found = {p["name"]: p["error"] for p in json.loads(listed.stdout)["plugins"]}
    assert {"nanogpt", "lora", "mlx", "swiftkv", "moshi_ttt"} <= set(plugins_found), plugins_found
    assert not any(plugins_found.values()), plugins_found  # every plugin loads without torch
    for args in (("convert", source, tmp_path / "mlx", "--to", "mlx"), ("convert", tmp_path / "mlx", tmp_path / "back.pt", "--to", "nanogpt"),
                 ("diff", source, tmp_path / "back.pt"), ("inspect", source)):
        done = without_torch(*args)
        assert done.returncode == 0 and done.stderr == "", (args, done.stderr)
    a, b = (torch.load(p, weights_only=True) for p in (source, tmp_path / "back.pt"))
    assert list(a) == list(b) and list(a["model"]) == list(b["model"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_what_needs_torch_says_so_in_one_line_without_it(tmp_path):
    legacy = tmp_path / "ckpt.pt"
    torch.save(torch.load(EXAMPLES / "tiny-nanogpt" / "ckpt.pt", weights_only=True), legacy,
               _use_new_zipfile_serialization=False)  # torch's pre-1.6 format: only torch's unpickler reads it
    done = without_torch("convert", legacy, tmp_path / "out", "--to", "mlx", "--from", "nanogpt")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "needs torch, which is not installed: pip install torch" in done.stderr and "[torch]" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not os.environ.get("CKPT_CORE_FRESH_VENV"), reason="builds a fresh venv from the package index "
                    "(about 60 s): set CKPT_CORE_FRESH_VENV=1")
def test_a_fresh_venv_without_torch_converts_the_example(tmp_path):
    """Issue 16's proof as a user meets it: pip install ./ ./plugins/nanogpt ./plugins/mlx into
    a new venv installs no torch, and the README's conversion there comes back bit for bit."""
    root, venv = EXAMPLES.parent, tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    pip = subprocess.run([venv / "bin" / "pip", "install", "-q", root, root / "plugins" / "nanogpt", root / "plugins" / "mlx"],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    python = venv / "bin" / "python"
    assert subprocess.run([python, "-c", "import torch"], capture_output=True).returncode != 0  # no torch came with them
    source = EXAMPLES / "tiny-nanogpt" / "ckpt.pt"
    for args in (("convert", source, tmp_path / "mlx", "--to", "mlx"), ("convert", tmp_path / "mlx", tmp_path / "back.pt", "--to", "nanogpt"),
                 ("diff", source, tmp_path / "back.pt")):
        done = subprocess.run([venv / "bin" / "ckpt-core", *map(str, args)], capture_output=True, text=True)
        assert done.returncode == 0, (args, done.stderr)
    a, b = (torch.load(p, weights_only=True) for p in (source, tmp_path / "back.pt"))
    assert list(a) == list(b) and list(a["model"]) == list(b["model"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
