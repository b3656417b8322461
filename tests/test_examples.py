"""The README's first conversion: the shipped nanoGPT example through MLX and back."""

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
    from make_tiny_nanogpt import checkpoint

    made, shipped = checkpoint(), torch.load(EXAMPLES / "tiny-nanogpt" / "ckpt.pt", weights_only=True)
    assert list(made) == list(shipped) and list(made["model"]) == list(shipped["model"])
    assert all(torch.equal(made["model"][k], shipped["model"][k]) for k in made["model"])
    assert made["optimizer"]["param_groups"] == shipped["optimizer"]["param_groups"]


def test_nanogpt_example_through_mlx_and_back_is_exact(tmp_path):
    source = EXAMPLES / "tiny-nanogpt" / "ckpt.pt"
    assert ckpt_core.detect(source)[0].format == "nanogpt"
    ckpt_core.convert(source, tmp_path / "mlx", to="mlx")
    ckpt_core.convert(tmp_path / "mlx", tmp_path / "back.pt", to="nanogpt", options={"orig_mod_prefix": True})
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
