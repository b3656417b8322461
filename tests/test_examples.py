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
