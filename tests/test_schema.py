"""Family schemas as data: deriving hyper-parameters, recognising and validating families."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import ckpt_core
from ckpt_core.errors import CorruptInput
from ckpt_core.gpt import GPT
from ckpt_core.schema import FamilySchema, TensorRule, expected_shape, recognise

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
from make_tiny_gpt import tiny_gpt  # noqa: E402


def shapes_of(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


def test_hyper_parameters_derive_from_shapes():
    assert GPT.derive_params(shapes_of(tiny_gpt())) == {
        "n_layer": 2, "vocab_size": 65, "d_model": 32, "block_size": 64, "d_ff": 128}


def test_a_real_nanogpt_state_dict_fits_without_problems():
    assert GPT.problems(shapes_of(tiny_gpt()), {}) == []


def test_problems_name_the_tensor():
    sd = shapes_of(tiny_gpt())
    del sd["transformer.h.1.mlp.c_fc.weight"]
    sd["transformer.h.0.attn.c_proj.weight"] = (32, 31)
    sd["transformer.h.0.mystery"] = (1,)
    found = GPT.problems(sd, {})
    assert "transformer.h.1.mlp.c_fc.weight: missing" in found
    assert "transformer.h.0.attn.c_proj.weight: shape [32, 31], gpt expects [32, 32]" in found
    assert "transformer.h.0.mystery: not a gpt tensor" in found


def test_explicit_params_override_derived_ones():
    found = GPT.problems(shapes_of(tiny_gpt()), {"d_ff": 64})
    assert any("mlp.c_fc.weight: shape [128, 32], gpt expects [64, 32]" in p for p in found)


def test_required_params_and_expressions():
    schema = FamilySchema("toy", "", (TensorRule("w", ("2*d+1", "d//2")),), {"d": ("w", 1)}, required_params=("heads",))
    assert expected_shape(("2*d+1", "d//2", 3), {"d": 4}) == (9, 2, 3)
    assert expected_shape(("unknown",), {}) is None
    assert schema.problems({"w": (9, 4)}, {"d": 8}) == ["w: shape [9, 4], toy expects [17, 4]", "hyper-parameter 'heads' missing"]
    with pytest.raises(ValueError, match="bad shape expression"):
        expected_shape(("__import__('os')",), {})


def test_recognise_picks_the_one_family_or_none():
    assert recognise([GPT], shapes_of(tiny_gpt())) is GPT
    assert recognise([GPT], {"encoder.weight": (3, 3)}) is None
    assert recognise([GPT], {}) is None


def test_load_recognises_gpt_from_names_alone(tmp_path):
    save_file(tiny_gpt(), str(tmp_path / "m.safetensors"))
    ck = ckpt_core.load(tmp_path / "m.safetensors")
    assert ck.arch.family == "gpt" and ck.arch.params["d_model"] == 32


def test_load_refuses_a_checkpoint_that_claims_a_family_it_does_not_fit(tmp_path):
    sd = tiny_gpt()
    sd["transformer.h.0.attn.c_attn.weight"] = np.zeros((90, 32), np.float32)
    graph = {"arch": {"family": "gpt", "params": {}}, "ties": {}, "kv_sharing": {}, "trainable": None}
    save_file(sd, str(tmp_path / "bad.safetensors"), metadata={"ckpt_core": json.dumps(graph)})
    with pytest.raises(CorruptInput, match=r"not a valid gpt checkpoint: transformer.h.0.attn.c_attn.weight: shape \[90, 32\]"):
        ckpt_core.load(tmp_path / "bad.safetensors")


def test_adamw_param_order_matches_nanogpt_configure_optimizers():
    """Built like nanoGPT's configure_optimizers: decay group (dim >= 2) then no-decay group."""
    torch = pytest.importorskip("torch")
    from ckpt_core.gpt import adamw_param_order

    model = torch.nn.ModuleDict({
        "wte": torch.nn.Embedding(11, 4), "ln": torch.nn.LayerNorm(4), "fc": torch.nn.Linear(4, 8), "head": torch.nn.Linear(4, 11, bias=False),
    })
    model["head"].weight = model["wte"].weight  # tied: named_parameters lists it once
    params = dict(model.named_parameters())
    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay}, {"params": no_decay}])
    by_position = {i: p for i, p in enumerate(optimizer.param_groups[0]["params"] + optimizer.param_groups[1]["params"])}
    order = adamw_param_order([(n, p.dim()) for n, p in params.items()])
    assert order == ["wte.weight", "fc.weight", "ln.weight", "ln.bias", "fc.bias"]
    assert all(by_position[i] is params[name] for i, name in enumerate(order))


def test_other_indexes_match_any_number_and_never_count_as_layers():
    from hypothesis import given

    from ckpt_core.testing import SETTINGS, checkpoints

    schema = FamilySchema("two-stacks", "layers {i}, per-step {k} and a second stack {j}", (
        TensorRule("layers.{i}.w", ("d",)),
        TensorRule("emb.{k}.weight", ("v", "d")),
        TensorRule("dep.{j}.proj.{k}.weight", ("d", "d")),
    ), derive={"v": ("emb.{k}.weight", 0)})
    shapes = {"layers.0.w": (4,), "layers.1.w": (4,), "emb.0.weight": (7, 4), "emb.12.weight": (7, 4),
              "dep.3.proj.5.weight": (4, 4)}
    assert schema.derive_params(shapes) == {"n_layer": 2, "v": 7}
    assert schema.problems(shapes, {"d": 4}) == []
    assert schema.problems({"layers.0.w": (4,), "emb.0.weight": (7, 4)}, {"d": 4}) == ["dep.{j}.proj.{k}.weight: missing"]
    assert schema.rule_for("emb.{k}.weight") is None

    @SETTINGS
    @given(checkpoints(family=schema))
    def drawn_checkpoints_fit(ck):
        assert schema.problems({n: ck.tensor(n).shape for n in ck.names()}, ck.arch.params) == []

    drawn_checkpoints_fit()


def test_a_layer_count_that_is_not_a_number_or_absurd_is_a_problem_not_a_crash():
    """``n_layer`` comes from files (config.json, manifests): a dict there was a TypeError,
    and 2**64 layers listed every missing layer (a hang)."""
    shapes = {"transformer.wte.weight": (8, 4), "transformer.wpe.weight": (4, 4), "lm_head.weight": (8, 4),
              "transformer.ln_f.weight": (4,)}
    assert any("n_layer is {}" in p for p in GPT.problems(shapes, {"n_layer": {}}))
    found = GPT.problems(shapes, {"n_layer": 2 ** 64})
    assert any(p.startswith("transformer.h.0.") and p.endswith("missing") for p in found)
