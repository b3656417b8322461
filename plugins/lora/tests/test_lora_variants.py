"""Variants of the fork's ckpt.pt: compiled (``_orig_mod.``), ``lora_only`` embeddings, rotary."""

from __future__ import annotations

import torch
from lora_reference import fork_model
from lora_reference import batch, checkpoint_dict, train

from ckpt_core import api, torchfile


def test_orig_mod_prefix_round_trips(tmp_path):
    model = fork_model()
    opt, names = train(model, steps=1)
    ck = checkpoint_dict(model, opt, names, universal=False)
    ck["model"] = {"_orig_mod." + k: v for k, v in ck["model"].items()}
    ck["param_names"] = ["_orig_mod." + n for n in names]
    torch.save(ck, tmp_path / "ckpt.pt")
    loaded = api.load(tmp_path / "ckpt.pt")
    assert "transformer.wte.weight" in loaded.adapters and loaded.train_state.optimizer.param_state
    api.save(loaded, tmp_path / "out.pt", "lora-nanogpt")
    back = torch.load(tmp_path / "out.pt", weights_only=True)
    assert list(back["model"]) == list(ck["model"]) and back["param_names"] == ck["param_names"]


def test_lora_only_embedding(tmp_path):
    model = fork_model(embedding_mode="lora_only").eval()
    opt, names = train(model, steps=1)
    torch.save(checkpoint_dict(model, opt, names, universal=False), tmp_path / "ckpt.pt")
    ck = api.load(tmp_path / "ckpt.pt")
    assert not ck.ties and "lm_head.weight" in ck.tensors
    assert not torchfile.to_torch(ck.tensors["transformer.wte.weight"]).any()  # no main weight: the delta is the embedding
    api.save(ck, tmp_path / "out.pt", "lora-nanogpt")
    back = torch.load(tmp_path / "out.pt", weights_only=True)
    assert back["model_args"]["embedding_mode"] == "lora_only"
    assert "transformer.wte.main_weight.weight" not in back["model"]
    again = fork_model(embedding_mode="lora_only").eval()
    again.load_state_dict(back["model"], strict=True)
    x = batch(model)
    assert torch.equal(again(x), model(x))


def test_rotary_variant(tmp_path):
    model = fork_model(use_rotary_embeddings=True).eval()
    opt, names = train(model, steps=1)
    torch.save(checkpoint_dict(model, opt, names, universal=False), tmp_path / "ckpt.pt")
    ck = api.load(tmp_path / "ckpt.pt")
    assert "transformer.wpe.weight" not in ck.tensors and "transformer.h.0.attn.rotary_emb.inv_freq" in ck.tensors
    api.save(ck, tmp_path / "out.pt", "lora-nanogpt")
    again = fork_model(use_rotary_embeddings=True).eval()
    again.load_state_dict(torch.load(tmp_path / "out.pt", weights_only=True)["model"], strict=True)
    x = batch(model)
    assert torch.equal(again(x), model(x))
