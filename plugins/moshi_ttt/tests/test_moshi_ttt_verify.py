"""TTT verification: inspect reports the TTT layers and tensors against the run config and
warns about missing or misshaped ones; diff compares TTT tensors exactly or within fp16
precision."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from ckpt_core.cli import main

CONSOLIDATED = "checkpoints/checkpoint_000300/consolidated"
TTT = "transformer.layers.1.seq_modeling_block.ttt_layer.ttt."


def cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as caught:
        main(list(map(str, args)))
    out = capsys.readouterr()
    return caught.value.code, out.out, out.err


def test_inspect_reports_the_ttt_layers_and_counts(full_run, capsys):
    code, out, err = cli(capsys, "inspect", full_run, "--json")
    assert code == 0
    # the fine-tuning code writes the LoRA run's config beside merged weights: flagged, nothing else
    assert err.splitlines() == [f'ckpt-core: warning: {full_run}: config.json says "lora": true but the weights are merged: '
                                'moshi would wrap random adapters around them (converting with this plugin writes "lora": false)']
    params = json.loads(out)["params"]
    assert (params["ttt_layers"], params["ttt_layers_expected"]) == ([1], [1])
    assert params["ttt_tensors"] == params["ttt_tensors_expected"] == 20
    assert (params["ttt_heads"], params["ttt_head_dim"]) == (4, 16)
    code, out, _ = cli(capsys, "inspect", full_run)
    assert "ttt_layers                  [1]" in out


def test_inspect_warns_about_missing_misshaped_and_unexpected_ttt_tensors(full_run, capsys):
    folder = full_run / CONSOLIDATED
    state = load_file(folder / "consolidated.safetensors")
    del state[TTT + "W2"]
    state[TTT + "b1"] = state[TTT + "b1"].reshape(4, 64, 1).contiguous()
    save_file(state, folder / "consolidated.safetensors")
    config = json.loads((folder / "training_config.json").read_text())
    config["ttt"]["layers"] = "all"
    (folder / "training_config.json").write_text(json.dumps(config))
    code, out, err = cli(capsys, "inspect", full_run, "--json")
    assert code == 0
    lines = err.splitlines()
    assert all(line.startswith("ckpt-core: warning:") for line in lines)
    warnings = [line for line in lines if '"lora": true' not in line]
    assert len(warnings) == 3
    assert any("TTT layer 0 expected by ttt.layers but has no TTT tensors" in w for w in warnings)
    assert any("transformer.layers.1.ttt.W2: missing" in w for w in warnings)
    assert any("transformer.layers.1.ttt.b1: shape [4, 64, 1], expected [4, 1, 64]" in w for w in warnings)
    params = json.loads(out)["params"]
    assert (params["ttt_layers"], params["ttt_layers_expected"], params["ttt_tensors"], params["ttt_tensors_expected"]) == (
        [1], [0, 1], 19, 40)


def _ttt_copy(full_run, full_model, dst, fp16: bool):
    """The checkpoint with its TTT tensors in float32 (as trained), or rounded to fp16 precision."""
    shutil.copytree(full_run, dst)
    folder = dst / CONSOLIDATED
    state = load_file(folder / "consolidated.safetensors")
    for key, value in full_model.state_dict().items():
        if "ttt_layer" in key:
            value = value.detach().float()
            state[key] = value.half().float() if fp16 else value
    save_file(state, folder / "consolidated.safetensors")
    return dst


def test_diff_compares_ttt_tensors_exactly_or_within_fp16_precision(full_run, full_model, tmp_path, capsys):
    exact = _ttt_copy(full_run, full_model, tmp_path / "f32", fp16=False)
    rounded = _ttt_copy(full_run, full_model, tmp_path / "f16", fp16=True)
    code, out, _ = cli(capsys, "diff", exact, exact / "checkpoints/checkpoint_000300")
    assert code == 0 and out.startswith("identical")
    code, out, _ = cli(capsys, "diff", exact, rounded, "--json")
    assert code == 1
    differing = {row["name"] for row in json.loads(out)["tensors"]}
    assert differing and all(name.startswith("transformer.layers.1.ttt.") for name in differing)
    assert "transformer.layers.1.ttt.W1" in differing
    fp16_ulp = ("--rtol", str(2 ** -10), "--atol", str(2 ** -24))  # one fp16 step (normal and subnormal)
    code, out, _ = cli(capsys, "diff", exact, rounded, *fp16_ulp)
    assert code == 0, out
    code, _, _ = cli(capsys, "diff", exact, rounded, "--rtol", "1e-6")
    assert code == 1
    # the tied second names of the original layer compare as names too
    code, out, _ = cli(capsys, "diff", exact, full_run, "--verbose", "--json")
    names = {row["name"] for row in json.loads(out)["tensors"]}
    assert "transformer.layers.1.ttt.original_layer.self_attn.in_projs.0.weight" in names


def test_ttt_facts_come_back_only_where_the_source_had_them(full_run, tmp_path):
    """The TTT facts are what the reader derives from a real run's tensors; a checkpoint
    without them (a canonical one drawn by hand) comes back from moshi without them, one with
    them with the same ones."""
    import ckpt_core
    from ckpt_core.model import Arch
    from ckpt_plugin_moshi_ttt import ttt

    with_facts = ckpt_core.load(full_run)
    assert with_facts.arch.params["ttt_layers"] == [1]
    plain = {k: v for k, v in with_facts.arch.params.items() if k not in ttt.FACT_KEYS}
    without = with_facts.evolve(arch=Arch(with_facts.arch.family, plain))
    for ck, name in ((with_facts, "with"), (without, "without")):
        ckpt_core.save(ck, tmp_path / name, "moshi", allow_loss=["train_state"])
        back = ckpt_core.load(tmp_path / name, "moshi")
        facts = {k: v for k, v in back.arch.params.items() if k in ("ttt_layers", "ttt_tensors")}
        assert facts == ({"ttt_layers": [1], "ttt_tensors": 20} if name == "with" else {})
        assert {k: v for k, v in back.arch.params.items() if k not in ttt.FACT_KEYS} == plain
