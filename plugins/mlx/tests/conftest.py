"""Fixtures of the mlx plugin's tests: real MLX models trained a few steps, saved as the seed saves them."""

from __future__ import annotations

import pytest

mx = pytest.importorskip("mlx.core", reason="mlx is not installed (pip install 'ckpt-plugin-mlx[mlx]'); the MLX model tests need it")

from mlx_models import Nested, make_optimizer, save_step, train  # noqa: E402


@pytest.fixture
def trained():
    """A Nested model and its AdamW optimizer after 3 real update steps."""
    mx.random.seed(0)
    model, opt = Nested(), make_optimizer()
    train(model, opt, range(3))
    return model, opt


@pytest.fixture
def seed_run(tmp_path, trained):
    """A run directory as the seed writes it: steps 1..3 (weights, state JSON, optimizer)
    and a best-validation copy of step 2 in best/."""
    model, opt = trained
    run = tmp_path / "run"
    for step in (1, 2, 3):
        save_step(run, step, epoch=0, model=model, optimizer=opt, metrics={"val_loss": 2.0 - step / 10})
    save_step(run / "best", 2, epoch=0, model=model, optimizer=opt, metrics={"val_loss": 1.8})
    return run
