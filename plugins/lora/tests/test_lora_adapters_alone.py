"""peft adapters without their base model (issue 15 item 5): read as adapters on absent
bases, converted to moshi's lora.safetensors, canonical and back bit for bit; only merging
and formats of full weights need ``base=PATH``, and say so."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file

import ckpt_core
from ckpt_core import BaseMissing, api, torchfile
from ckpt_core.compare import differences

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
WEIGHTS = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny Llama (its own directory) and peft adapters on it saved by peft, naming a hub
    id as their base, as a downloaded adapter does: ckpt-core finds no base."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("alone")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    base = transformers.LlamaForCausalLM(config)
    base.save_pretrained(root / "base")
    lora = LoraConfig(r=4, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(base, lora)
        model.peft_config["default"].base_model_name_or_path = "example/tiny-llama"
        model.save_pretrained(root / "adapter")
    return root


def same_files(a, b) -> bool:
    x, y = load_file(a / WEIGHTS), load_file(b / WEIGHTS)
    return sorted(x) == sorted(y) and all(torch.equal(x[k], y[k]) for k in x)


def meaning(adapter) -> dict:
    config = json.loads((adapter / "adapter_config.json").read_text())
    return {k: sorted(v) if k == "target_modules" else v for k, v in config.items()
            if k in ("peft_type", "r", "lora_alpha", "target_modules", "use_rslora", "rank_pattern", "alpha_pattern")}


def logits(root, adapter):
    from peft import PeftModel

    model = PeftModel.from_pretrained(transformers.LlamaForCausalLM.from_pretrained(root / "base"), adapter).eval()
    with torch.no_grad():
        return model(torch.arange(12).reshape(1, 12)).logits


def test_read_without_base_as_adapters_on_absent_bases(made):
    ck = api.load(made / "adapter")
    raw = load_file(made / "adapter" / WEIGHTS)
    assert len(ck.adapters) == 14 and ck.absent_names() == list(ck.tensors)
    q = "model.layers.1.self_attn.q_proj.weight"
    assert (ck.tensors[q].dtype, ck.tensors[q].shape) == ("F32", (32, 32))
    assert (ck.tensors["model.layers.0.self_attn.k_proj.weight"].shape) == (16, 32)
    assert torch.equal(torchfile.to_torch(ck.adapters[q].b), raw["base_model.model." + q.replace(".weight", ".lora_B.weight")])
    assert ck.layout.variant == "absent"


def test_peft_moshi_peft_bit_exact_without_base(made, tmp_path):
    api.convert(made / "adapter", tmp_path / "moshi", "moshi")
    lora = load_file(tmp_path / "moshi" / "lora.safetensors")
    config = json.loads((tmp_path / "moshi" / "config.json").read_text())
    assert (config["lora"], config["lora_rank"], config["lora_scaling"]) == (True, 4, 4.0)  # 16 / 4, a plain scale
    raw = load_file(made / "adapter" / WEIGHTS)
    key = "model.layers.0.mlp.up_proj.lora_A.weight"
    assert torch.equal(lora[key], raw["base_model.model." + key]) and len(lora) == len(raw)
    api.convert(tmp_path / "moshi", tmp_path / "back", "peft")
    assert same_files(made / "adapter", tmp_path / "back")
    assert meaning(tmp_path / "back") == meaning(made / "adapter")
    assert torch.equal(logits(made, tmp_path / "back"), logits(made, made / "adapter"))


def test_peft_canonical_peft_bit_exact_without_base(made, tmp_path):
    ck = api.convert(made / "adapter", tmp_path / "canonical", "canonical")
    assert differences(ck, api.load(tmp_path / "canonical")) == []
    api.convert(tmp_path / "canonical", tmp_path / "back", "peft")
    assert same_files(made / "adapter", tmp_path / "back")
    assert json.loads((tmp_path / "back" / "adapter_config.json").read_text()) == \
        json.loads((made / "adapter" / "adapter_config.json").read_text())


def test_adapters_written_from_elsewhere_keep_their_bases(made, tmp_path):
    """A peft file written from adapters alone records their bases' dtypes (BF16 here,
    though the adapters are F32) and reads them back."""
    ck = api.load(made / "adapter")
    bf16 = ck.evolve(tensors={n: ckpt_core.Tensor.absent("BF16", t.shape) for n, t in ck.tensors.items()})
    api.save(bf16, tmp_path / "out", "peft")
    back = api.load(tmp_path / "out")
    assert differences(bf16, back) == [] and {t.dtype for t in back.tensors.values()} == {"BF16"}


def cli(*args):
    return subprocess.run([sys.executable, "-m", "ckpt_core", *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("extra", [["--to", "safetensors"], ["--to", "hf"], ["--to", "canonical", "--merge-adapters"],
                                   ["--to", "moshi", "--option", "weights=full"]])
def test_full_weights_and_merging_need_the_base(made, tmp_path, extra):
    out = tmp_path / "out"
    done = cli("convert", made / "adapter", out, *extra)
    assert done.returncode == BaseMissing.exit_code == 13, done.stderr
    assert done.stderr.count("\n") == 1 and "--option base=PATH" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


def test_with_the_base_the_merge_is_peft_merge(made, tmp_path):
    from peft import PeftModel

    done = cli("convert", made / "adapter", tmp_path / "merged", "--to", "hf", "--option", f"base={made / 'base'}",
               "--merge-adapters")
    assert done.returncode == 0, done.stderr
    merged = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "merged").eval()
    reference = PeftModel.from_pretrained(transformers.LlamaForCausalLM.from_pretrained(made / "base"),
                                          made / "adapter").merge_and_unload().eval()
    tokens = torch.arange(12).reshape(1, 12)
    with torch.no_grad():
        torch.testing.assert_close(merged(tokens).logits, reference(tokens).logits)
