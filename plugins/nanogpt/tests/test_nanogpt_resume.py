"""Resuming nanoGPT training (model + AdamW state) from a converted checkpoint continues
exactly as the uninterrupted run: the next steps' losses are equal, bit for bit."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import nanogpt_reference as ref  # noqa: E402

import ckpt_core  # noqa: E402


def _fresh(bias: bool, mask_buffer: bool):
    torch.manual_seed(1)
    model = ref.NanoGPT(ref.GPTConfig(bias=bias), mask_buffer)
    return model, model.configure_optimizers(0.1, 6e-4, (0.9, 0.95))


@pytest.mark.parametrize("bias, mask_buffer", [(False, False), (True, True)], ids=["no-bias", "bias-and-mask"])
def test_resume_from_converted_checkpoint_matches_uninterrupted_run(tmp_path, bias, mask_buffer):
    model, opt = _fresh(bias, mask_buffer)
    uninterrupted = ref.train_nanogpt(model, opt, range(6))

    model, opt = _fresh(bias, mask_buffer)
    ref.train_nanogpt(model, opt, range(4))
    ref.save_nanogpt(model, opt, 4, tmp_path / "ckpt.pt")
    ckpt_core.convert(tmp_path / "ckpt.pt", tmp_path / "canon", "canonical")
    ckpt_core.convert(tmp_path / "canon", tmp_path / "resume.pt", "nanogpt", {"orig_mod_prefix": False})

    model, opt, checkpoint = ref.load_nanogpt(tmp_path / "resume.pt", mask_buffer)
    assert checkpoint["iter_num"] == 4 and not any(k.startswith("_orig_mod.") for k in checkpoint["model"])
    resumed = ref.train_nanogpt(model, opt, range(4, 6))
    assert resumed == uninterrupted[4:]
