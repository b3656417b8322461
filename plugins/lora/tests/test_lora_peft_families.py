"""peft adapters on transformers' Llama, Mistral, Qwen2 and Qwen3, made by peft itself:
every target, rank_pattern / alpha_pattern and rsLoRA read and written, proved by
PeftModel.from_pretrained giving the same logits for what ckpt-core writes."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from ckpt_core import Layout, api, torchfile

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head"]
SIZES = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=32)
# family -> (config class, model class, extra config); Qwen3 ties its head to the embedding
MODELS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": False}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"tie_word_embeddings": False}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": False}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"tie_word_embeddings": True, "head_dim": 8}),
}
RANK_PATTERN = {"model.layers.1.self_attn.q_proj": 2}
ALPHA_PATTERN = {"down_proj": 3}


def base_class(family):
    return getattr(transformers, MODELS[family][1])


def make_peft(root, family, **lora):
    """A tiny base model of ``family`` saved with save_pretrained, and peft adapters on all
    nine targets saved with peft's own save_pretrained (random A and B, so they count)."""
    from peft import LoraConfig, get_peft_model

    config_class, _, extra = MODELS[family]
    torch.manual_seed(0)
    base = base_class(family)(getattr(transformers, config_class)(**SIZES, **extra))
    base.save_pretrained(root / "base")
    settings = {"rank_pattern": RANK_PATTERN, "alpha_pattern": ALPHA_PATTERN, **lora}
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False, **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        get_peft_model(base, config).save_pretrained(root / "adapter")
    return root


def peft_logits(base_dir, adapter_dir, tokens):
    from peft import PeftModel

    config = json.loads((base_dir / "config.json").read_text())
    family = config["model_type"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(base_class(family).from_pretrained(base_dir), adapter_dir).eval()
        with torch.no_grad():
            return model(tokens).logits


def adapter_tensors(adapter_dir):
    from safetensors.torch import load_file

    return load_file(adapter_dir / "adapter_model.safetensors")


TOKENS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="session", params=list(MODELS))
def made(request, tmp_path_factory):
    return request.param, make_peft(tmp_path_factory.mktemp(request.param), request.param)


def test_every_target_is_an_adapter_edge(made):
    family, root = made
    ck = api.load(root / "adapter", options={"base": str(root / "base")})
    raw = adapter_tensors(root / "adapter")
    assert ck.arch.family in (family, "llama")  # the core reads a Mistral directory as the llama family today
    assert len(ck.adapters) == 2 + 7 * 2
    q = ck.adapters["model.layers.0.self_attn.q_proj.weight"]
    assert (q.rank, q.alpha, q.scaling, q.kind) == (4, 8.0, "alpha/rank", "linear")
    assert torch.equal(torchfile.to_torch(q.a), raw["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"])
    assert torch.equal(torchfile.to_torch(q.b), raw["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"])
    assert ck.adapters["model.layers.1.self_attn.q_proj.weight"].rank == 2  # rank_pattern
    assert {ck.adapters[f"model.layers.{i}.mlp.down_proj.weight"].alpha for i in (0, 1)} == {3.0}  # alpha_pattern
    emb = ck.adapters["model.embed_tokens.weight"]
    assert emb.kind == "embedding"
    assert torch.equal(torchfile.to_torch(emb.b), raw["base_model.model.model.embed_tokens.lora_embedding_A"].T)
    assert ck.adapters["lm_head.weight"].kind == "linear"
    # peft saved the embedding's and head's whole weights too: they are the model's tensors
    assert torch.equal(torchfile.to_torch(ck.tensor("model.embed_tokens.weight")),
                       raw["base_model.model.model.embed_tokens.base_layer.weight"])
    assert ck.ties == ({"lm_head.weight": "model.embed_tokens.weight"} if family == "qwen3" else {})


def test_written_adapters_give_peft_logits_bit_for_bit(made, tmp_path):
    family, root = made
    ck = api.load(root / "adapter", options={"base": str(root / "base")})
    api.save(ck, tmp_path / "adapter", "peft", {"base": str(root / "base")})
    assert not (tmp_path / "adapter" / "base_model").exists()
    original, written = adapter_tensors(root / "adapter"), adapter_tensors(tmp_path / "adapter")
    assert sorted(original) == sorted(written)
    assert all(torch.equal(original[k], written[k]) for k in original)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(root / "base") and config["fan_in_fan_out"] is False
    logits = peft_logits(root / "base", tmp_path / "adapter", TOKENS)
    assert torch.equal(logits, peft_logits(root / "base", root / "adapter", TOKENS))
    with torch.no_grad():
        plain = base_class(family).from_pretrained(root / "base").eval()(TOKENS).logits
    assert (logits - plain).abs().max() > 1e-3  # the adapters count


def test_config_written_from_the_adapters_alone(made, tmp_path):
    """With no peft config to start from, r, lora_alpha, rank_pattern, alpha_pattern and
    target_modules are found from the adapters, and peft computes the same."""
    family, root = made
    ck = api.load(root / "adapter", options={"base": str(root / "base")})
    api.save(ck.evolve(layout=Layout()), tmp_path / "adapter", "peft", {"base": str(root / "base")})
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["use_rslora"], config["fan_in_fan_out"]) == (4, 8.0, False, False)
    assert config["rank_pattern"] == RANK_PATTERN
    assert config["alpha_pattern"] == {f"model.layers.{i}.mlp.down_proj": 3.0 for i in (0, 1)}
    assert sorted(config["target_modules"]) == sorted(TARGETS)
    assert torch.equal(peft_logits(root / "base", tmp_path / "adapter", TOKENS),
                       peft_logits(root / "base", root / "adapter", TOKENS))


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_base_written_beside_the_adapters(family, tmp_path):
    """Without base=PATH the base goes to base_model/ through the hf format: transformers
    loads it and peft computes the same logits on it."""
    (tmp_path / "src").mkdir()
    root = make_peft(tmp_path / "src", family)
    ck = api.load(root / "adapter", options={"base": str(root / "base")})
    api.save(ck, tmp_path / "out", "peft")
    assert (tmp_path / "out" / "base_model" / "config.json").is_file()
    assert torch.equal(peft_logits(tmp_path / "out" / "base_model", tmp_path / "out", TOKENS),
                       peft_logits(root / "base", root / "adapter", TOKENS))
    again = api.load(tmp_path / "out")  # the base found in base_model/
    assert again.layout.variant == "directory" and len(again.adapters) == len(ck.adapters)


def test_rslora(tmp_path):
    root = make_peft(tmp_path, "llama", use_rslora=True, rank_pattern={}, alpha_pattern={})
    ck = api.load(root / "adapter", options={"base": str(root / "base")})
    assert {(a.scaling, a.scale) for a in ck.adapters.values()} == {("alpha/sqrt(rank)", 4.0)}
    api.save(ck.evolve(layout=Layout()), tmp_path / "written", "peft", {"base": str(root / "base")})
    assert json.loads((tmp_path / "written" / "adapter_config.json").read_text())["use_rslora"] is True
    assert torch.equal(peft_logits(root / "base", tmp_path / "written", TOKENS),
                       peft_logits(root / "base", root / "adapter", TOKENS))
