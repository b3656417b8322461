"""Pytest fixtures for ckpt-core and its plugins (loaded through the ``pytest11`` entry point).

Pytest imports this in every project of an environment where ckpt-core is installed, so it
imports nothing at module level beyond pytest: no hypothesis, no numpy. Each fixture
imports what it needs when used.
"""

from __future__ import annotations

import sys

import pytest


@pytest.fixture
def ckpt_plugins_only(monkeypatch):
    """Factory: ``ckpt_plugins_only("lora", "mlx")`` loads the built-ins and only those
    entry points (none when called with no names); returns the fresh registry. The
    registry is rebuilt before and after, so no other test sees the change."""
    from ckpt_core import plugins

    def only(*names: str):
        monkeypatch.setenv(plugins.ENV_VAR, ",".join(names))
        plugins.reset()
        return plugins.registry()

    yield only
    plugins.reset()


@pytest.fixture
def ckpt_install_plugin(tmp_path, monkeypatch):
    """Factory: install a plugin distribution from source text, found through its entry
    points as if pip-installed, for this test only.

    ``ckpt_install_plugin("ckpt-plugin-x", {"x_plugin": SOURCE}, {"x": "x_plugin"})``
    writes the modules and a ``<dist>-<version>.dist-info`` (METADATA, entry_points.txt in
    group ``ckpt_core``) into a fresh directory on ``sys.path`` and resets the registry.
    The modules are forgotten and the registry reset again afterwards.
    """
    from ckpt_core import plugins

    modules: list[str] = []

    def install(dist: str, sources: dict[str, str], entry_points: dict[str, str], version: str = "0.1"):
        root = tmp_path / f"site-{dist}"
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        for name, source in sources.items():
            (root / f"{name}.py").write_text(source)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text("[ckpt_core]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
        monkeypatch.syspath_prepend(str(root))
        modules.extend(sources)
        plugins.reset()
        return root

    yield install
    for name in modules:
        sys.modules.pop(name, None)
    plugins.reset()


def example_checkpoint():
    """A small gpt Checkpoint built from numpy: one layer, F32 and F16 tensors, a BF16
    ``c_attn`` and ``lm_head.weight`` tied to ``transformer.wte.weight``."""
    import numpy as np

    from ckpt_core import Arch, Checkpoint, Tensor

    vocab, d, ff, block = 8, 4, 16, 4
    rng = np.random.default_rng(0)

    def f32(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    bf16_words = (f32(3 * d, d).view(np.uint32) >> 16).astype(np.uint16)  # bf16: a float32's top half
    h = "transformer.h.0."
    arrays = {
        "transformer.wte.weight": f32(vocab, d),
        "transformer.wpe.weight": f32(block, d),
        h + "ln_1.weight": np.ones(d, np.float32),
        h + "ln_1.bias": np.zeros(d, np.float16),
        h + "attn.c_proj.weight": f32(d, d),
        h + "ln_2.weight": np.ones(d, np.float32),
        h + "mlp.c_fc.weight": f32(ff, d).astype(np.float16),
        h + "mlp.c_proj.weight": f32(d, ff),
        "transformer.ln_f.weight": np.ones(d, np.float32),
    }
    tensors = {name: Tensor.from_numpy(a) for name, a in arrays.items()}
    tensors[h + "attn.c_attn.weight"] = Tensor.from_numpy(bf16_words, dtype="BF16")
    params = {"vocab_size": vocab, "d_model": d, "d_ff": ff, "block_size": block, "n_layer": 1, "n_head": 2}
    return Checkpoint(arch=Arch("gpt", params), tensors=tensors, ties={"lm_head.weight": "transformer.wte.weight"})


@pytest.fixture
def ckpt_example_checkpoint():
    """``example_checkpoint()``: a small gpt Checkpoint with a tie and a BF16 tensor."""
    return example_checkpoint()
