"""Upstream-style checkpoints, trained once per session by the reference modules."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import nanogpt_reference as ref  # noqa: E402


@pytest.fixture(scope="session")
def upstream(tmp_path_factory) -> dict[str, Path]:
    """Files as the upstream scripts write them, after 3 training steps on random tokens:
    ``nanogpt`` (bias=False, compiled), ``nanogpt_bias`` (bias=True, torch < 2.0 mask buffer,
    not compiled), ``nanogpt_bare`` (a bare state dict), ``modded`` (qkv layout, 2025-07+:
    one vocabulary size), ``medium`` (qkvo layout: 61-row embeddings, 64-row head) and
    ``modded_bare``, ``medium_bare`` (the latter of the compiled model)."""
    import torch

    root = tmp_path_factory.mktemp("upstream")
    torch.manual_seed(0)
    files = {}
    model = ref.NanoGPT(ref.GPTConfig())
    opt = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95))
    ref.train_nanogpt(model, opt, range(3))
    files["nanogpt"] = root / "out" / "ckpt.pt"
    files["nanogpt"].parent.mkdir()
    ref.save_nanogpt(model, opt, 3, files["nanogpt"])
    files["nanogpt_bare"] = root / "model.pt"
    torch.save(model.state_dict(), files["nanogpt_bare"])

    model = ref.NanoGPT(ref.GPTConfig(bias=True), mask_buffer=True)
    opt = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95))
    ref.train_nanogpt(model, opt, range(3))
    files["nanogpt_bias"] = root / "out-bias" / "ckpt.pt"
    files["nanogpt_bias"].parent.mkdir()
    ref.save_nanogpt(model, opt, 3, files["nanogpt_bias"], compiled=False)

    model = ref.ModdedQKV(ref.ModdedConfig())
    opts = ref.modded_optimizers(model)
    ref.train_modded(model, opts, range(3))
    with torch.no_grad():  # padding values that only a byte-exact copy keeps
        model.scalars[-4:] = torch.tensor([7.0, -0.0, float("inf"), 1e-30])
    files["modded"] = ref.save_modded(model, opts, 3, root / "logs" / "run-qkv")
    files["modded_bare"] = root / "modded_model.pt"
    torch.save(model.state_dict(), files["modded_bare"])

    model = ref.ModdedQKVO(ref.ModdedConfig(vocab_size=61))
    opts = ref.modded_optimizers(model)
    ref.train_modded(model, opts, range(3))
    files["medium"] = ref.save_modded(model, opts, 3, root / "logs" / "run-qkvo")
    files["medium_bare"] = root / "medium_model.pt"
    torch.save(torch.compile(model).state_dict(), files["medium_bare"])
    return files
