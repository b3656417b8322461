"""The core's conformance suite for the ``mlx`` format, on a real MLX run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckpt_core.errors import CorruptInput, NotFound, UnsafeInput
from ckpt_core.testing import FormatConformance

mx = pytest.importorskip("mlx.core", reason="mlx is not installed; the conformance example is written by real MLX")

from mlx_models import Nested, make_optimizer, save_step, train  # noqa: E402


def _example(directory: Path) -> Path:
    """A seed-style run directory with one step: weights, state JSON and optimizer state."""
    mx.random.seed(1)
    model, opt = Nested(n_blocks=1), make_optimizer()
    train(model, opt, range(2))
    save_step(directory / "run", 2, epoch=0, model=model, optimizer=opt)
    return directory / "run"


def _with_state(directory: Path, state) -> Path:
    run = _example(directory)
    (run / "step_000002_state.json").write_text(state if isinstance(state, str) else json.dumps(state))
    return run


def _optimizer_named(name: str):
    def make(directory: Path) -> Path:
        return _with_state(directory, {"format_version": 1, "step": 2, "epoch": 0, "metrics": {},
                                       "optimizer": {"file": name, "kind": "", "param_state": {}, "groups": [],
                                                     "resumable": True, "extra": {}}})
    return make


def _bad_metadata(directory: Path) -> Path:
    run = _example(directory)
    weights = run / "step_000002.safetensors"
    tensors = mx.load(str(weights))
    weights.unlink()
    mx.save_safetensors(str(weights), tensors, metadata={"ckpt_core_mlx": "{not json"})
    return weights


class TestMlxConformance(FormatConformance):
    format = "mlx"
    bad_inputs = [
        ("state JSON from a newer plugin", lambda d: _with_state(d / "x", {"format_version": 9, "step": 2}), CorruptInput),
        ("state JSON not an object", lambda d: _with_state(d / "x", "[1, 2]"), CorruptInput),
        ("state JSON not JSON", lambda d: _with_state(d / "x", "{step: 2"), CorruptInput),
        ("step not an integer", lambda d: _with_state(d / "x", {"step": "two", "epoch": 0, "metrics": {}}), CorruptInput),
        ("optimizer file outside the directory", _optimizer_named("../step_000002_optimizer.safetensors"), UnsafeInput),
        ("optimizer file missing", _optimizer_named("step_000009_optimizer.safetensors"), NotFound),
        ("malformed graph metadata", _bad_metadata, CorruptInput),
        ("a directory with no step files", lambda d: d, NotFound),
    ]

    def make_example(self, tmp_path):
        return _example(tmp_path)
