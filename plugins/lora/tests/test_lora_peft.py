"""peft interop with the real transformers GPT2LMHeadModel and peft LoraConfig."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from ckpt_core import CkptWarning, CorruptInput, api, torchfile
from ckpt_core.compare import differences

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


def tiny_peft(root, rslora=False):
    """A tiny GPT-2 saved with save_pretrained, and real peft adapters on c_attn and wte,
    initialised randomly (not B = 0) so that they change the logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=48, n_positions=16, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    base = GPT2LMHeadModel(config)
    base.save_pretrained(root / "base")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "wte"], fan_in_fan_out=True,
                      init_lora_weights=False, use_rslora=rslora, rank_pattern={"transformer.h.1.attn.c_attn": 2})
    model = get_peft_model(base, lora)
    model.peft_config["default"].base_model_name_or_path = str(root / "base")
    model.save_pretrained(root / "adapter")
    return model.eval()


def load_peft(base_dir, adapter_dir):
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    return PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(base_dir), adapter_dir).eval()


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    root = tmp_path_factory.mktemp("peft")
    model = tiny_peft(root)
    return {"root": root, "model": model, "x": torch.randint(0, 48, (2, 16), generator=torch.Generator().manual_seed(3))}


def test_detect_peft_directory(hf):
    found = api.detect(hf["root"] / "adapter")[0]
    assert found.format == "peft" and "r 4" in found.reason and "c_attn" in found.reason and "wte" in found.reason


def test_import_maps_adapters_exactly(hf):
    from safetensors.torch import load_file

    ck = api.load(hf["root"] / "adapter")
    raw = load_file(hf["root"] / "adapter" / "adapter_model.safetensors")
    attn = ck.adapters["transformer.h.0.attn.c_attn.weight"]
    assert (attn.rank, attn.alpha, attn.kind) == (4, 8.0, "linear")
    assert torch.equal(torchfile.to_torch(attn.a), raw["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"])
    assert ck.adapters["transformer.h.1.attn.c_attn.weight"].rank == 2  # rank_pattern
    emb = ck.adapters["transformer.wte.weight"]
    assert emb.kind == "embedding"
    assert torch.equal(torchfile.to_torch(emb.b), raw["base_model.model.transformer.wte.lora_embedding_A"].T)
    assert torch.equal(torchfile.to_torch(emb.a), raw["base_model.model.transformer.wte.lora_embedding_B"].T)
    # the base: HF Conv1D [in, out] transposed exactly to [out, in]
    base = hf["model"].get_base_model()
    assert torch.equal(torchfile.to_torch(ck.tensors["transformer.h.0.attn.c_attn.weight"]), base.transformer.h[0].attn.c_attn.base_layer.weight.T)
    assert ck.ties == {"lm_head.weight": "transformer.wte.weight"}


def test_peft_to_fork_and_back_loads_in_peft_with_equal_logits(hf, tmp_path):
    fork = tmp_path / "ckpt.pt"
    # the base's HF files (config fields, generation_config.json) have no place in the fork's file
    api.convert(hf["root"] / "adapter", fork, "lora-nanogpt", allow_loss=["extra"])
    sd = torch.load(fork, weights_only=True)["model"]
    raw = hf["model"].state_dict()
    # the fork's embedding A is peft's lora_embedding_A transposed; B is lora_embedding_B
    assert torch.equal(sd["transformer.wte.lora_A.weight"], raw["base_model.model.transformer.wte.lora_embedding_A.default"].T)
    assert torch.equal(sd["transformer.wte.lora_B.weight"], raw["base_model.model.transformer.wte.lora_embedding_B.default"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CkptWarning)
        api.convert(fork, tmp_path / "adapter", "peft", {"base": str(hf["root"] / "base")})
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is True and config["rank_pattern"] == {"transformer.h.1.attn.c_attn": 2}
    loaded = load_peft(hf["root"] / "base", tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(loaded(hf["x"]).logits, hf["model"](hf["x"]).logits)


def test_peft_round_trip_carries_its_base(hf, tmp_path):
    ck = api.load(hf["root"] / "adapter")
    api.save(ck, tmp_path / "adapter", "peft")
    assert (tmp_path / "adapter" / "base_model" / "model.safetensors").is_file()
    assert differences(ck, api.load(tmp_path / "adapter")) == []
    # the base's file is plain HF GPT-2 safetensors to any other reader (its graph is under a key of its own)
    plain = api.load(tmp_path / "adapter" / "base_model" / "model.safetensors", "safetensors")
    assert "transformer.h.0.attn.c_attn.weight" in plain.tensors
    loaded = load_peft(tmp_path / "adapter" / "base_model", tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(loaded(hf["x"]).logits, hf["model"](hf["x"]).logits)


def test_merged_peft_equals_peft_merge(hf, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CkptWarning)
        ck = api.convert(hf["root"] / "adapter", tmp_path / "merged", "canonical", merge_adapters=True)
    merged = load_peft(hf["root"] / "base", hf["root"] / "adapter").merge_and_unload()
    sd = merged.state_dict()
    torch.testing.assert_close(torchfile.to_torch(ck.tensor("transformer.h.0.attn.c_attn.weight")), sd["transformer.h.0.attn.c_attn.weight"].T)
    torch.testing.assert_close(torchfile.to_torch(ck.tensor("transformer.wte.weight")), sd["transformer.wte.weight"])


def test_rslora_scaling(tmp_path):
    tiny_peft(tmp_path, rslora=True)
    ck = api.load(tmp_path / "adapter")
    assert {a.scaling for a in ck.adapters.values()} == {"alpha/sqrt(rank)"}
    api.save(ck, tmp_path / "again", "peft", {"base": str(tmp_path / "base")})
    assert json.loads((tmp_path / "again" / "adapter_config.json").read_text())["use_rslora"] is True


def test_bin_weights_are_read(hf, tmp_path):
    from safetensors.torch import load_file

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text((hf["root"] / "adapter" / "adapter_config.json").read_text())
    torch.save(load_file(hf["root"] / "adapter" / "adapter_model.safetensors"), adapter / "adapter_model.bin")
    assert api.detect(adapter)[0].format == "peft"
    assert differences(api.load(adapter), api.load(hf["root"] / "adapter")) == []


def test_base_found_or_given(hf, tmp_path):
    """A base named by a hub id is not found: the adapters are read alone; base=PATH gives it."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = json.loads((hf["root"] / "adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "openai-community/gpt2"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    (adapter / "adapter_model.safetensors").write_bytes((hf["root"] / "adapter" / "adapter_model.safetensors").read_bytes())
    alone = api.load(adapter)
    assert alone.absent_names() == list(alone.tensors) and len(alone.adapters) == 3
    given = api.load(adapter, options={"base": str(hf["root"] / "base")})
    assert not given.absent_names() and differences(given, api.load(hf["root"] / "adapter")) == []


def test_dora_is_refused(hf, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = json.loads((hf["root"] / "adapter" / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    (adapter / "adapter_model.safetensors").write_bytes((hf["root"] / "adapter" / "adapter_model.safetensors").read_bytes())
    with pytest.raises(CorruptInput, match="DoRA"):
        api.load(adapter, "peft")


def test_base_saved_without_the_transformer_prefix(hf, tmp_path):
    from safetensors.torch import load_file, save_file

    base = tmp_path / "gpt2"
    base.mkdir()
    (base / "config.json").write_text((hf["root"] / "base" / "config.json").read_text())
    tensors = load_file(hf["root"] / "base" / "model.safetensors")
    save_file({k.removeprefix("transformer."): v for k, v in tensors.items()}, base / "model.safetensors", {"format": "pt"})
    ck = api.load(hf["root"] / "adapter", options={"base": str(base)})
    # the same model; only the files beside the weights differ (this base has no generation_config.json)
    assert differences(ck.evolve(extra={}), api.load(hf["root"] / "adapter").evolve(extra={})) == []
