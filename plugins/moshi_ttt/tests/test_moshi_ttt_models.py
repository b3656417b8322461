"""Conversions of real moshi run directories, loaded back into moshi's LMModel with strict=True."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from moshi.modules.lora import replace_lora_with_linear
from safetensors.torch import load_file

import ckpt_core
from ckpt_core import LossyConversion, UsageError
from ckpt_core.cli import main
from ckpt_core.compare import differences
from ckpt_core.plugins import registry

import moshi_ttt_reference as reference

CONSOLIDATED = "checkpoints/checkpoint_000300/consolidated"


def cli(*args) -> int:
    with pytest.raises(SystemExit) as caught:
        main(["--quiet", *map(str, args)])
    return caught.value.code


def loaded(path: Path, lora: bool) -> torch.nn.Module:
    model = reference.empty_lm(lora=lora)
    model.load_state_dict(load_file(path), strict=True)
    return model


def reference_outputs(model, merge: bool = False):
    clone = copy.deepcopy(model).to(torch.bfloat16)
    if merge:
        replace_lora_with_linear(clone)
    return reference.outputs(clone)


def test_lora_run_with_base_becomes_a_full_lora_checkpoint_that_loads_strict(lora_run, lora_model, tmp_path):
    out = tmp_path / "out"
    assert cli("convert", lora_run, out, "--to", "moshi", "--option", f"base={lora_run.parent / 'model.safetensors'}") == 0
    folder = out / CONSOLIDATED
    config = json.loads((folder / "config.json").read_text())
    assert (config["lora"], config["lora_rank"], config["lora_scaling"]) == (True, 2, 2.0)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "consolidated.safetensors", "optimizer_state.pt",
                                                       "training_config.json"]
    model = loaded(folder / "consolidated.safetensors", lora=True)
    for got, want in zip(reference.outputs(model), reference_outputs(lora_model)):
        assert torch.equal(got, want)


def test_merging_on_request_writes_lora_false_and_matches_moshis_own_merge(lora_run, lora_model, tmp_path):
    out = tmp_path / "merged"
    base = lora_run.parent / "model.safetensors"
    assert cli("convert", lora_run, out, "--to", "moshi", "--option", f"base={base}", "--merge-adapters") == 0
    folder = out / CONSOLIDATED
    assert json.loads((folder / "config.json").read_text())["lora"] is False
    state = load_file(folder / "consolidated.safetensors")
    assert not [k for k in state if "lora" in k or "frozen_W" in k]
    # the merged weight is W + scaling * (B @ A) in float32, rounded once to bf16
    lora = load_file(lora_run / CONSOLIDATED / "lora.safetensors")
    w = load_file(base)["text_linear.weight"].float()
    delta = lora["text_linear.lora_B.weight"].float() @ lora["text_linear.lora_A.weight"].float()
    assert torch.equal(state["text_linear.weight"], (w + 2.0 * delta).to(torch.bfloat16))
    # both names of a TTT layer's merged weight hold the merged value
    assert torch.equal(state["transformer.layers.1.original_layer.gating.linear_in.weight"],
                       state["transformer.layers.1.seq_modeling_block.original_layer.gating.linear_in.weight"])
    model = loaded(folder / "consolidated.safetensors", lora=False)
    for got, want in zip(reference.outputs(model), reference_outputs(lora_model, merge=True)):
        torch.testing.assert_close(got, want, atol=0.1, rtol=0.05)


def test_full_run_round_trip_loads_strict_with_identical_outputs(full_run, tmp_path):
    out = tmp_path / "copy"
    assert cli("convert", full_run, out, "--to", "moshi") == 0
    original = load_file(full_run / CONSOLIDATED / "consolidated.safetensors")
    written = load_file(out / CONSOLIDATED / "consolidated.safetensors")
    assert sorted(original) == sorted(written)
    assert all(torch.equal(original[k], written[k]) for k in original)
    assert json.loads((out / CONSOLIDATED / "config.json").read_text())["lora"] is False  # merged weights
    for got, want in zip(reference.outputs(loaded(out / CONSOLIDATED / "consolidated.safetensors", lora=False)),
                         reference.outputs(loaded(full_run / CONSOLIDATED / "consolidated.safetensors", lora=False))):
        assert torch.equal(got, want)


def test_full_to_adapters_only_keeps_the_trained_tensors_and_refuses_to_drop_silently(lora_run, tmp_path):
    full = tmp_path / "full"
    ckpt_core.convert(lora_run, full, "moshi", {"base": str(lora_run.parent / "model.safetensors")})
    with pytest.raises(LossyConversion, match="drop_frozen=true"):
        ckpt_core.convert(full, tmp_path / "refused", "moshi", {"weights": "lora"})
    assert not (tmp_path / "refused").exists()
    assert cli("convert", full, tmp_path / "refused", "--to", "moshi", "--option", "weights=lora") == 7
    ckpt_core.convert(full, tmp_path / "split", "moshi", {"weights": "lora", "drop_frozen": True})
    original = load_file(lora_run / CONSOLIDATED / "lora.safetensors")
    split = load_file(tmp_path / "split" / CONSOLIDATED / "lora.safetensors")
    assert sorted(original) == sorted(split)
    assert all(torch.equal(original[k], split[k]) for k in original)


def test_a_merged_full_checkpoint_to_adapters_only_is_refused(full_run, tmp_path):
    with pytest.raises(LossyConversion, match="frozen tensors"):
        ckpt_core.convert(full_run, tmp_path / "out", "moshi", {"weights": "lora"})


def test_adapters_only_without_base_are_adapters_on_absent_bases(lora_run, tmp_path):
    """moshi's own lora.safetensors, read without its base: each LoRA pair an adapter on its
    absent ``X.weight``, the TTT tensors as they are, the family moshi's (what is there fits
    it; what a model of it needs besides is not asked of adapters alone); through canonical and
    back, bit for bit."""
    ck = ckpt_core.load(lora_run)
    assert ck.arch.family == "moshi"
    lora = load_file(lora_run / CONSOLIDATED / "lora.safetensors")
    pairs = [k for k in lora if k.endswith("lora_A.weight")]
    # a TTT layer's second name of an adapted weight is a tie to it, as with the base
    assert len(ck.adapters) == len(pairs) and set(ck.absent_names()) | set(ck.ties) == set(ck.adapters)
    base = ck.tensors["text_linear.weight"]
    assert base.is_absent and (base.dtype, list(base.shape)) == (str(lora["text_linear.lora_A.weight"].dtype).replace(
        "torch.bfloat16", "BF16"), [lora["text_linear.lora_B.weight"].shape[0], lora["text_linear.lora_A.weight"].shape[1]])
    assert {a.scale for a in ck.adapters.values()} == {2.0}
    ckpt_core.convert(lora_run, tmp_path / "canonical", "canonical")
    ckpt_core.convert(tmp_path / "canonical", tmp_path / "back", "moshi")
    back = load_file(tmp_path / "back" / CONSOLIDATED / "lora.safetensors")
    assert sorted(back) == sorted(lora) and all(torch.equal(back[k], lora[k]) for k in lora)
    config = json.loads((tmp_path / "back" / CONSOLIDATED / "config.json").read_text())
    assert config == json.loads((lora_run / CONSOLIDATED / "config.json").read_text())


def test_adapters_only_to_full_needs_the_base(lora_run, tmp_path, capsys):
    assert cli("convert", lora_run, tmp_path / "out", "--to", "moshi", "--option", "weights=full") == 13
    err = capsys.readouterr().err
    assert "base=PATH" in err and err.count("\n") == 1
    assert cli("convert", lora_run, tmp_path / "out", "--to", "safetensors") == 13 and not (tmp_path / "out").exists()
    # canonical keeps the adapters-only checkpoint; the base can be given when writing moshi
    ckpt_core.convert(lora_run, tmp_path / "canon", "canonical")
    with pytest.raises(UsageError, match="base=PATH"):
        ckpt_core.convert(tmp_path / "canon", tmp_path / "out", "moshi", {"weights": "full"})
    ckpt_core.convert(tmp_path / "canon", tmp_path / "out", "moshi", {"weights": "full", "base": str(lora_run.parent / "model.safetensors")})
    loaded(tmp_path / "out" / CONSOLIDATED / "consolidated.safetensors", lora=True)


def test_legacy_naming_is_read_and_written_on_request(full_run, tmp_path):
    legacy = tmp_path / "legacy"
    ckpt_core.convert(full_run, legacy, "moshi", {"naming": "legacy"})
    state = load_file(legacy / CONSOLIDATED / "consolidated.safetensors")
    assert list(state["depformer.layers.0.self_attn.in_proj_weight"].shape) == [2 * 96, 32]
    assert "transformer.layers.1.seq_modeling_block.original_layer.self_attn.in_proj_weight" in state
    assert not [k for k in state if "in_projs" in k or "out_projs" in k]
    # moshi's own loader splits the legacy keys
    want = reference.outputs(loaded(full_run / CONSOLIDATED / "consolidated.safetensors", lora=False))
    for got, expected in zip(reference.outputs(loaded(legacy / CONSOLIDATED / "consolidated.safetensors", lora=False)), want):
        assert torch.equal(got, expected)
    # read back, it is the same checkpoint; written again, it has current names
    assert differences(ckpt_core.load(full_run), ckpt_core.load(legacy)) == []
    ckpt_core.convert(legacy, tmp_path / "current", "moshi")
    current = load_file(tmp_path / "current" / CONSOLIDATED / "consolidated.safetensors")
    assert sorted(current) == sorted(load_file(full_run / CONSOLIDATED / "consolidated.safetensors"))


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_canonical_round_trip_is_bit_exact(kind, lora_run, full_run, tmp_path):
    run = lora_run if kind == "lora" else full_run
    ck = ckpt_core.load(run)
    ckpt_core.save(ck, tmp_path / "canon", "canonical")
    ckpt_core.convert(tmp_path / "canon", tmp_path / "back", "moshi")
    assert differences(ck, ckpt_core.load(tmp_path / "canon")) == []
    assert differences(ck, ckpt_core.load(tmp_path / "back")) == []


def test_mlx_round_trip_is_bit_exact(full_run, tmp_path):
    """MLX step files hold full weights (the adapters-only run needs its base, and MLX keeps
    no adapters: test_adapters_only_to_full_needs_the_base)."""
    if "mlx" not in registry().formats:
        pytest.skip("the mlx format is not installed")
    ck = ckpt_core.load(full_run)
    ckpt_core.save(ck, tmp_path / "mlx-run", "mlx")
    ckpt_core.save(ckpt_core.load(tmp_path / "mlx-run", "mlx"), tmp_path / "again", "moshi")
    assert differences(ck, ckpt_core.load(tmp_path / "again")) == []


def test_init_state_export_is_weights_only(lora_run, tmp_path):
    out = tmp_path / "init"
    base = lora_run.parent / "model.safetensors"
    assert cli("convert", lora_run, out, "--to", "moshi", "--option", f"base={base}", "--option", "init_state=true") == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "consolidated.safetensors"]
    assert ckpt_core.train_state(out) is None
    loaded(out / "consolidated.safetensors", lora=True)


def test_run_checkpoint_and_consolidated_folders_read_alike(lora_run):
    run = ckpt_core.load(lora_run)
    folder = ckpt_core.load(lora_run / "checkpoints/checkpoint_000300")
    consolidated = ckpt_core.load(lora_run / CONSOLIDATED)
    assert run.train_state.step == folder.train_state.step == consolidated.train_state.step == 300
    assert "args" in run.train_state.config and "args" not in folder.train_state.config
    assert ckpt_core.diff(run, folder).identical and ckpt_core.diff(run, consolidated).identical


def test_base_may_be_a_moshi_checkpoint_or_a_model_safetensors(lora_run, tmp_path):
    model_file = lora_run.parent / "model.safetensors"
    assert ckpt_core.load(model_file).arch.family == "moshi"  # the safetensors format recognises the family
    ckpt_core.convert(model_file, tmp_path / "consolidated", "moshi")  # a moshi consolidated/ folder of the base
    from_file = ckpt_core.load(lora_run, options={"base": str(model_file)})
    from_folder = ckpt_core.load(lora_run, options={"base": str(tmp_path / "consolidated")})
    assert differences(from_file, from_folder) == []
    assert len(from_file.adapters) == 21 + 4 and from_file.arch.family == "moshi"  # 21 linears, 4 TTT second names
    with pytest.raises(UsageError, match="holds LoRA weights"):
        ckpt_core.load(lora_run, options={"base": str(lora_run)})
