"""Training state: the seed's unversioned JSON migrates, version 1 round-trips everything, and
the ``train_state`` hook reads it without touching weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ckpt_core import Checkpoint, OptimizerState, Tensor, TrainState, api
from ckpt_core.compare import differences
from ckpt_core.errors import CorruptInput, LossyConversion, UsageError

mx = pytest.importorskip("mlx.core", reason="mlx is not installed; the optimizer files are written by real MLX")

from mlx_models import SCHEDULE  # noqa: E402


def test_seed_state_migrates_to_version_1(seed_run, tmp_path):
    state = seed_run / "step_000003_state.json"
    seed = json.loads(state.read_text())
    state.write_text(json.dumps({**seed, "scheduler": SCHEDULE, "lr_warmup": 10}))
    ts = api.train_state(seed_run)
    assert (ts.step, ts.epoch, ts.metrics, ts.scheduler) == (3, 0, seed["metrics"], SCHEDULE)
    assert ts.extra == {"lr_warmup": 10}  # keys the state has no field for are kept

    api.convert(seed_run, tmp_path / "out", "mlx")
    written = json.loads((tmp_path / "out" / "step_000003_state.json").read_text())
    assert written["format_version"] == 1
    assert {k: written[k] for k in ("step", "epoch", "metrics", "scheduler")} == {**seed, "scheduler": SCHEDULE}
    assert written["extra"] == {"lr_warmup": 10}
    again = api.train_state(tmp_path / "out")
    assert (again.step, again.epoch, again.metrics, again.scheduler, again.extra) == (3, 0, seed["metrics"], SCHEDULE, {"lr_warmup": 10})
    api.convert(tmp_path / "out", tmp_path / "again", "mlx")
    assert json.loads((tmp_path / "again" / "step_000003_state.json").read_text()) == written


def test_train_state_reads_no_weight_data(seed_run, tmp_path):
    """Version 1 state needs nothing of the weights file; the seed's needs its header only
    (parameter names, to key the optimizer state)."""
    api.convert(seed_run, tmp_path / "out", "mlx")
    expected = api.train_state(seed_run)
    step = tmp_path / "out" / "step_000003.safetensors"
    step.write_bytes(b"")  # not even a header left
    with pytest.raises(CorruptInput):
        api.load(step)
    assert differences(Checkpoint(train_state=api.train_state(step)), Checkpoint(train_state=expected)) == []

    seed_step = seed_run / "step_000003.safetensors"
    raw = seed_step.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    seed_step.write_bytes(raw[:8 + n] + bytes(len(raw) - 8 - n))  # header intact, every weight zeroed
    assert differences(Checkpoint(train_state=api.train_state(seed_step)), Checkpoint(train_state=expected)) == []


def test_optimizer_state_from_another_format_round_trips(tmp_path):
    """torch-style AdamW state (exp_avg, int steps, groups with tuples) keeps every value and
    lands in the optimizer file under {param}.{slot} keys."""
    w = Tensor.from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))
    param_state = {"w": {"exp_avg": Tensor.from_numpy(np.ones((2, 3), np.float32)), "step": 7}}
    opt = OptimizerState("adamw", param_state, [{"lr": 0.1, "betas": (0.9, 0.95), "params": ["w"]}])
    ts = TrainState(step=7, epoch=1, best_metric=Tensor.from_numpy(np.float32(1.25)), optimizer=opt, rng=b"\x01\x02",
                    config={"batch_size": 8})
    ck = Checkpoint(tensors={"w": w}, train_state=ts)
    api.save(ck, tmp_path / "out", "mlx")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "step_000007.safetensors", "step_000007_optimizer.safetensors", "step_000007_state.json", "step_000007_state.safetensors"]
    assert list(mx.load(str(tmp_path / "out" / "step_000007_optimizer.safetensors"))) == ["w.exp_avg"]
    assert differences(ck, api.load(tmp_path / "out")) == []


def test_optimizer_tensors_mlx_cannot_load_are_refused(tmp_path):
    opt = OptimizerState("adamw", {"w": {"exp_avg": Tensor.from_numpy(np.ones(2))}})
    ck = Checkpoint(tensors={"w": Tensor.from_numpy(np.ones(2, np.float32))}, train_state=TrainState(step=1, optimizer=opt))
    with pytest.raises(LossyConversion, match="w.exp_avg are F64"):
        api.save(ck, tmp_path / "out", "mlx")
    assert not list(tmp_path.iterdir())


def test_a_weights_only_checkpoint_round_trips_through_a_run_directory(tmp_path):
    ck = Checkpoint(tensors={"w": Tensor.from_numpy(np.ones(2, np.float32))})
    api.save(ck, tmp_path / "out", "mlx")
    assert json.loads((tmp_path / "out" / "step_000000_state.json").read_text()) == {"format_version": 1, "train_state": None}
    back = api.load(tmp_path / "out")
    assert back.train_state is None and differences(ck, back) == []


def test_weights_only_is_for_a_single_file(tmp_path):
    ck = Checkpoint(tensors={"w": Tensor.from_numpy(np.ones(2, np.float32))}, train_state=TrainState(step=3))
    with pytest.raises(UsageError, match="weights_only"):
        api.save(ck, tmp_path / "out", "mlx", {"weights_only": True})
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("seed_state", [{"step": 3, "epoch": 0, "metrics": None}, {"step": 3}])
def test_seed_state_without_metrics_or_epoch_is_read_as_it_is(seed_run, tmp_path, seed_state):
    """A seed loop that saves before its first validation writes "metrics": null, or only
    the step: nothing there, read without complaint, and kept through a conversion."""
    (seed_run / "step_000003_state.json").write_text(json.dumps(seed_state))
    ts = api.train_state(seed_run)
    assert (ts.step, ts.epoch, ts.metrics) == (3, seed_state.get("epoch"), seed_state.get("metrics", {}))
    api.convert(seed_run, tmp_path / "canon", "canonical")
    api.convert(tmp_path / "canon", tmp_path / "out", "mlx")
    written = json.loads((tmp_path / "out" / "step_000003_state.json").read_text())
    assert (written["step"], written["epoch"], written["metrics"]) == (3, seed_state.get("epoch"), seed_state.get("metrics", {}))
