"""The conformance suite on real moshi run directories, with moshi-specific bad inputs."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

import ckpt_core
from ckpt_core import Adapter, CorruptInput, NotFound, OptimizerState, Tensor, TrainState, UnsafeInput
from ckpt_core.testing import FormatConformance

from moshi_ttt_reference import copy_run

CONSOLIDATED = "checkpoints/checkpoint_000300/consolidated"


def _only_interrupted(d: Path) -> Path:
    run = copy_run("lora", d / "run")
    for step in (100, 200, 300):
        shutil.rmtree(run / f"checkpoints/checkpoint_{step:06d}")
    return run


def _both_weights(d: Path) -> Path:
    run = copy_run("full", d / "run")
    (run / CONSOLIDATED / "lora.safetensors").write_bytes((run / CONSOLIDATED / "consolidated.safetensors").read_bytes())
    return run / CONSOLIDATED


def _no_config(d: Path) -> Path:
    run = copy_run("full", d / "run")
    (run / CONSOLIDATED / "config.json").unlink()
    return run / CONSOLIDATED


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def _unsafe_optimizer(d: Path) -> Path:
    run = copy_run("lora", d / "run")
    import torch

    torch.save({"optimizer": _Evil(), "step": 300}, run / CONSOLIDATED / "optimizer_state.pt")
    return run


def _lonely_lora_a(d: Path) -> Path:
    from safetensors.numpy import save_file

    run = copy_run("lora", d / "run")
    path = run / CONSOLIDATED / "lora.safetensors"
    save_file({"text_linear.lora_A.weight": np.zeros((2, 64), np.float32)}, path)
    return run


def _bad_ttt_layers(d: Path) -> Path:
    run = copy_run("full", d / "run")
    path = run / CONSOLIDATED / "training_config.json"
    config = json.loads(path.read_text())
    config["ttt"]["layers"] = "first few"
    path.write_text(json.dumps(config))
    return run


@functools.cache
def _example_checkpoint():
    import atexit
    import shutil
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="moshi-ttt-strategy-"))
    atexit.register(shutil.rmtree, directory, True)  # after the last test: its tensors read these files
    return ckpt_core.load(copy_run("lora", directory / "run"), "moshi", {"base": str(directory / "model.safetensors")})


@st.composite
def _variations(draw):
    """The real tiny checkpoint (LoRA adapters attached, TTT ties) with drawn bytes and
    dtypes, some adapters dropped, and a drawn step and optimizer state."""
    ck = _example_checkpoint()
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = draw(st.sampled_from(["BF16", "F16", "F32"]))

    def fresh(t: Tensor) -> Tensor:
        from ckpt_core import dtypes

        nbytes = t.numel * dtypes.get(dtype).itemsize
        return Tensor.from_bytes(rng.bytes(nbytes), dtype, t.shape)

    tensors = {n: fresh(t) for n, t in ck.tensors.items()}
    kept = draw(st.sets(st.sampled_from(sorted(ck.adapters)), min_size=0))
    adapters = {n: Adapter(fresh(ad.a), fresh(ad.b), ad.alpha, ad.scaling) for n, ad in ck.adapters.items() if n in kept}
    ts = ck.train_state
    opt = OptimizerState(ts.optimizer.kind, {n: {"step": fresh(s["step"]), "exp_avg": fresh(s["exp_avg"]),
                                                 "exp_avg_sq": fresh(s["exp_avg_sq"])}
                                             for n, s in ts.optimizer.param_state.items()}, ts.optimizer.groups)
    step = draw(st.integers(0, 10**6))
    return ck.evolve(tensors=tensors, adapters=adapters,
                     train_state=TrainState(step=step, optimizer=opt, config=ts.config))


class TestMoshiConformance(FormatConformance):
    format = "moshi"
    bad_inputs = [
        ("only an interrupted save", _only_interrupted, CorruptInput),
        ("both weights files", _both_weights, CorruptInput),
        ("no config.json", _no_config, CorruptInput),
        ("an optimizer pickle that runs code", _unsafe_optimizer, UnsafeInput),
        ("lora_A without lora_B", _lonely_lora_a, CorruptInput),
        ("unreadable ttt.layers", _bad_ttt_layers, CorruptInput),
        ("nothing moshi", lambda d: d, NotFound),
    ]

    def make_example(self, tmp_path: Path) -> Path:
        return copy_run("single", tmp_path / "run")

    def checkpoint_strategy(self):
        return _variations()
