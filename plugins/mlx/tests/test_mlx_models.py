"""Real MLX models saved as the seed saves them: read, converted, and loaded back into MLX."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from ckpt_core import api, torchfile
from ckpt_core.errors import LossyConversion

mx = pytest.importorskip("mlx.core", reason="mlx is not installed; these tests load checkpoints into real MLX models")

from mlx.utils import tree_flatten  # noqa: E402
from mlx_models import GPT, Nested, make_optimizer, save_step, train  # noqa: E402

from ckpt_plugin_mlx import to_mlx, tree_unflatten  # noqa: E402

CLI = [sys.executable, "-m", "ckpt_core"]


def cli(*args):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True)


def words(a) -> bytes:
    """An mx array's bytes (bf16 through a same-width integer view)."""
    if a.dtype == mx.bfloat16:
        a = a.view(mx.uint16)
    return np.array(a).tobytes()


def file_bytes(path) -> dict[str, bytes]:
    return {k: words(v) for k, v in mx.load(str(path)).items()}


def test_real_mlx_files_are_read_as_written(seed_run, trained):
    """mx.save_safetensors writes null metadata, an unpadded header and data out of key order."""
    step = seed_run / "step_000003.safetensors"
    raw = step.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    assert header.pop("__metadata__") is None
    offsets = [v["data_offsets"][0] for v in header.values()]
    assert offsets != sorted(offsets) or (8 + n) % 8, "expected an MLX quirk the reader must accept"
    ck = api.load(step)
    model, _ = trained
    assert {k: t.tobytes() for k, t in ck.tensors.items()} == {k: words(v) for k, v in tree_flatten(model.parameters())}


def test_detect_run_directory_and_step_file(seed_run):
    for path in (seed_run, seed_run / "step_000002.safetensors", seed_run / "best"):
        found = api.detect(path)
        assert found[0].format == "mlx" and all(d.confidence < found[0].confidence for d in found[1:]), found
    out = cli("detect", seed_run)
    assert out.returncode == 0 and "mlx" in out.stdout


def test_generic_model_keeps_every_name_and_its_training_state(seed_run, trained):
    model, opt = trained
    ck = api.load(seed_run)
    assert ck.arch.family == "generic"
    assert set(ck.tensors) == {k for k, _ in tree_flatten(model.parameters())}
    ts = ck.train_state
    assert (ts.step, ts.epoch, ts.metrics) == (3, 0, {"val_loss": 1.7})
    assert set(ts.optimizer.param_state) == set(ck.tensors)
    assert all(set(slots) == {"m", "v"} for slots in ts.optimizer.param_state.values())
    assert set(ts.optimizer.extra["state"]) == {"step", "learning_rate"}
    assert np.frombuffer(ts.optimizer.extra["state"]["step"].tobytes(), np.uint64)[0] == 3


def test_gpt_port_is_recognised_as_the_gpt_family(tmp_path):
    mx.random.seed(2)
    model, opt = GPT(vocab=16), make_optimizer()
    train(model, opt, range(2))
    save_step(tmp_path / "run", 2, epoch=0, model=model, optimizer=opt)
    ck = api.load(tmp_path / "run")
    assert ck.arch.family == "gpt"
    assert ck.arch.params == {"n_layer": 2, "vocab_size": 16, "d_model": 16, "block_size": 8, "d_ff": 64}
    api.convert(tmp_path / "run", tmp_path / "out", "mlx")
    fresh = GPT(vocab=16)
    fresh.load_weights(str(tmp_path / "out" / "step_000002.safetensors"), strict=True)
    assert api.load(tmp_path / "out").arch == ck.arch


def test_mlx_to_canonical_to_mlx_is_exact_and_loads_strictly(seed_run, tmp_path):
    assert cli("convert", seed_run, tmp_path / "canon", "--to", "canonical").returncode == 0
    done = cli("convert", tmp_path / "canon", tmp_path / "out", "--to", "mlx")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["step_000003.safetensors", "step_000003_optimizer.safetensors",
                                                    "step_000003_state.json"]
    for suffix in (".safetensors", "_optimizer.safetensors"):
        assert file_bytes(out / f"step_000003{suffix}") == file_bytes(seed_run / f"step_000003{suffix}")
    seed_state = json.loads((seed_run / "step_000003_state.json").read_text())
    state = json.loads((out / "step_000003_state.json").read_text())
    assert state.pop("format_version") == 1 and state.pop("optimizer")["file"] == "step_000003_optimizer.safetensors"
    assert state == seed_state
    same = cli("diff", seed_run, out)
    assert same.returncode == 0 and "identical" in same.stdout

    model = Nested()
    model.load_weights(str(out / "step_000003.safetensors"), strict=True)
    again = Nested()
    again.update(tree_unflatten(mx.load(str(out / "step_000003.safetensors"))))
    third = Nested()
    third.update(to_mlx(api.load(out).tensors))
    for m in (again, third):
        assert {k: words(v) for k, v in tree_flatten(m.parameters())} == {k: words(v) for k, v in tree_flatten(model.parameters())}
    with pytest.raises(ValueError):
        Nested(n_blocks=3).load_weights(str(out / "step_000003.safetensors"), strict=True)  # strict really checks


def test_resuming_from_a_converted_checkpoint_continues_exactly(tmp_path):
    """Save at step 4, convert mlx -> canonical -> mlx, resume from the converted files
    alone (weights, optimizer state, schedule): the next step's loss and the weights after
    it equal the uninterrupted run's."""
    schedule = {"name": "cosine_decay", "init": 2e-2, "decay_steps": 6}
    mx.random.seed(7)
    model, opt = Nested(), make_optimizer(schedule)
    train(model, opt, range(4))
    save_step(tmp_path / "run", 4, epoch=1, model=model, optimizer=opt, scheduler=schedule)
    expected_loss = train(model, opt, range(4, 5))
    expected = {k: words(v) for k, v in tree_flatten(model.parameters())}

    api.convert(tmp_path / "run", tmp_path / "canon", "canonical")
    api.convert(tmp_path / "canon", tmp_path / "out", "mlx")
    mx.random.seed(99)  # a different initialisation: everything must come from the files
    ts = api.train_state(tmp_path / "out")
    assert (ts.step, ts.epoch, ts.scheduler) == (4, 1, schedule)
    resumed, resumed_opt = Nested(), make_optimizer(ts.scheduler)
    resumed.load_weights(str(tmp_path / "out" / "step_000004.safetensors"), strict=True)
    resumed_opt.state = tree_unflatten(mx.load(str(tmp_path / "out" / "step_000004_optimizer.safetensors")))
    assert train(resumed, resumed_opt, range(ts.step, ts.step + 1)) == expected_loss
    assert {k: words(v) for k, v in tree_flatten(resumed.parameters())} == expected


def test_bf16_complex64_and_every_mlx_dtype_are_byte_exact(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "bf16.weight": mx.array(rng.standard_normal((4, 3)).astype(np.float32)).astype(mx.bfloat16),
        "f16": mx.array(rng.standard_normal(5).astype(np.float16)),
        "f32": mx.array(np.array([np.nan, np.inf, -0.0, 1e-45], np.float32)),
        "flag": mx.array(np.array([True, False])),
        "scalar": mx.array(np.float32(3.5)),
        "empty": mx.zeros((0, 2)),
        "c64": mx.array(np.array([1 + 2j, np.nan - 1j], np.complex64)),
    }
    for kind in ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64"):
        info = np.iinfo(kind)
        arrays[kind] = mx.array(np.array([info.min, info.max, 1], kind))
    run = tmp_path / "run"
    run.mkdir()
    mx.save_safetensors(str(run / "step_000001.safetensors"), arrays)
    (run / "step_000001_state.json").write_text(json.dumps({"step": 1, "epoch": 0, "metrics": {}}))
    api.convert(run, tmp_path / "canon", "canonical")
    api.convert(tmp_path / "canon", tmp_path / "out", "mlx")
    back = mx.load(str(tmp_path / "out" / "step_000001.safetensors"))
    assert {k: v.dtype for k, v in back.items()} == {k: v.dtype for k, v in arrays.items()}
    assert {k: words(v) for k, v in back.items()} == {k: words(v) for k, v in arrays.items()}
    torch = pytest.importorskip("torch")
    bf16 = torchfile.to_torch(api.load(tmp_path / "out").tensors["bf16.weight"])
    assert bf16.dtype == torch.bfloat16 and bf16.view(torch.uint16).numpy().tobytes() == words(arrays["bf16.weight"])


def test_float64_is_refused_unless_cast(tmp_path):
    from ckpt_core import Checkpoint, Tensor

    values = np.linspace(0, 1, 6).reshape(2, 3)
    ck = Checkpoint(tensors={"w": Tensor.from_numpy(values), "b": Tensor.from_numpy(np.ones(2, np.float32))})
    api.save(ck, tmp_path / "canon", "canonical")
    refused = cli("convert", tmp_path / "canon", tmp_path / "out", "--to", "mlx")
    assert refused.returncode == 7 and "F64" in refused.stderr and "--cast F64=" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    cast = cli("convert", tmp_path / "canon", tmp_path / "out", "--to", "mlx", "--cast", "F64=F32")
    assert cast.returncode == 0, cast.stderr
    loaded = mx.load(str(tmp_path / "out" / "step_000000.safetensors"))
    assert loaded["w"].dtype == mx.float32 and np.array_equal(np.array(loaded["w"]), values.astype(np.float32))


def test_a_single_step_file_is_read_with_its_companions(seed_run, tmp_path):
    step = seed_run / "step_000002.safetensors"
    ck = api.load(step)
    assert ck.train_state.step == 2 and ck.train_state.optimizer is not None
    with pytest.raises(LossyConversion, match="weights_only=true"):
        api.save(ck, tmp_path / "weights.safetensors", "mlx")
    assert not (tmp_path / "weights.safetensors").exists()
    api.save(ck, tmp_path / "weights.safetensors", "mlx", {"weights_only": True})
    Nested().load_weights(str(tmp_path / "weights.safetensors"), strict=True)
    alone = api.load(tmp_path / "weights.safetensors")
    assert alone.train_state is None and list(alone.tensors) == list(ck.tensors)


def test_tree_unflatten_matches_mlx():
    from mlx.utils import tree_unflatten as reference

    cases = [
        {"layers.0.weight": 1, "layers.2.weight": 2, "norm.bias": 3},
        {"a.1": 1, "a.01": 2},
        {"": 5},
        {"0": 1, "1.x": 2, "1.y.0": 3},
        {"blocks.0.mlp.1.weight": 1, "blocks.0.mlp.0.weight": 2, "blocks.1.norm.weight": 3},
        {},
    ]
    for flat in cases:
        assert tree_unflatten(flat) == reference(flat), flat
        assert tree_unflatten(list(flat.items())) == reference(list(flat.items()))
    source, model = Nested(), Nested()
    model.update(tree_unflatten(dict(tree_flatten(source.parameters()))))
    assert {k: words(v) for k, v in tree_flatten(model.parameters())} == {k: words(v) for k, v in tree_flatten(source.parameters())}
