"""The nanoGPT LoRA fork's ckpt.pt: detection, canonical mapping, writing back, merging."""

from __future__ import annotations

import warnings
from dataclasses import asdict

import numpy as np
import pytest
import torch
from lora_reference import fork_model
from lora_reference import LoRAConfig, LoRAGPT, batch, checkpoint_dict, train

from ckpt_core import CkptWarning, CorruptInput, LossyConversion, UsageError, api, torchfile, transforms
from ckpt_core.compare import differences


def _load_model(path, **overrides) -> LoRAGPT:
    """The fork's model for a ckpt.pt, loaded with strict=True."""
    ck = torch.load(path, weights_only=True)
    model = LoRAGPT(LoRAConfig(**{**ck["model_args"], **overrides}), _layer_ranks(ck["model"]))
    model.load_state_dict(ck["model"], strict=True)
    return model.eval()


def _layer_ranks(sd) -> dict[int, int]:
    ranks = {}
    for key in sd:
        if key.endswith("attn.c_attn.main_weight.weight"):
            i = int(key.split(".")[2])
            a = sd.get(key.replace("main_weight", "lora_A"))
            ranks[i] = a.shape[0] if a is not None else 0
    return ranks


def _quiet_load(path, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CkptWarning)
        return api.load(path, options=options or None)


def test_detect_names_ranks_and_targets(fork):
    lora = api.detect(fork["dir"] / "lora.pt")[0]
    assert (lora.format, lora.confidence) == ("lora-nanogpt", 0.95)
    assert "attn rank 4" in lora.reason and "embedding rank 4" in lora.reason and "alpha 8.0" in lora.reason
    merged = api.detect(fork["dir"] / "merged.pt")[0]
    assert merged.format == "lora-nanogpt" and "merged" in merged.reason and "attn rank 4" in merged.reason
    bare = api.detect(fork["dir"] / "bare.pt")[0]
    assert bare.format == "lora-nanogpt" and "bare LoRA state dict" in bare.reason


def test_detect_leaves_plain_nanogpt_alone(tmp_path):
    model = LoRAGPT(LoRAConfig(attn_lora_rank=0, embedding_mode="default"))
    args = {k: v for k, v in asdict(model.config).items() if k in ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")}
    torch.save({"model": model.state_dict(), "model_args": args, "iter_num": 0}, tmp_path / "ckpt.pt")
    from ckpt_plugin_lora import detection

    assert detection.detect_fork(tmp_path / "ckpt.pt") is None


def test_adapters_are_edges_never_merged(fork):
    ck = _quiet_load(fork["dir"] / "lora.pt")
    sd = fork["model"].state_dict()
    attn = ck.adapters["transformer.h.0.attn.c_attn.weight"]
    assert (attn.rank, attn.alpha, attn.scaling, attn.kind) == (4, 8.0, "alpha/rank", "linear")
    assert torch.equal(torchfile.to_torch(attn.a), sd["transformer.h.0.attn.c_attn.lora_A.weight"])  # [r, in]
    assert torch.equal(torchfile.to_torch(attn.b), sd["transformer.h.0.attn.c_attn.lora_B.weight"])  # [out, r]
    emb = ck.adapters["transformer.wte.weight"]
    assert emb.kind == "embedding"
    assert torch.equal(torchfile.to_torch(emb.b), sd["transformer.wte.lora_A.weight"])  # [V, r]
    assert torch.equal(torchfile.to_torch(emb.a), sd["transformer.wte.lora_B.weight"].T)  # [r, C]
    assert torch.equal(torchfile.to_torch(ck.tensors["transformer.h.0.attn.c_attn.weight"]), sd["transformer.h.0.attn.c_attn.main_weight.weight"])
    assert ck.ties == {"lm_head.weight": "transformer.wte.weight"}
    assert "transformer.h.1.attn.c_attn.weight" in ck.tensors and "transformer.h.1.attn.c_attn.weight" not in ck.adapters
    assert ck.layout.variant == "lora" and ck.train_state.step == 3


def test_lora_file_written_back_loads_strictly_and_exactly(fork, tmp_path):
    ck = _quiet_load(fork["dir"] / "lora.pt")
    api.save(ck, tmp_path / "ckpt.pt", "lora-nanogpt")
    a, b = (torch.load(p, weights_only=True) for p in (fork["dir"] / "lora.pt", tmp_path / "ckpt.pt"))
    assert list(a) == list(b) and list(a["model"]) == list(b["model"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert b["model"]["lm_head.weight"].untyped_storage().data_ptr() == b["model"]["transformer.wte.main_weight.weight"].untyped_storage().data_ptr()
    assert a["param_names"] == b["param_names"] and a["model_args"] == b["model_args"]
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    for pos, slots in a["optimizer"]["state"].items():
        assert all(torch.equal(v, b["optimizer"]["state"][pos][k]) for k, v in slots.items())
    model = _load_model(tmp_path / "ckpt.pt")
    x = batch(model)
    assert torch.equal(model(x), fork["model"](x))
    # and the optimizer resumes in the reference model
    model.freeze_main_weights()
    opt, _ = model.configure_optimizers()
    opt.load_state_dict(b["optimizer"])


def test_optimizer_state_is_named(fork):
    ts = api.train_state(fork["dir"] / "lora.pt")
    names = list(ts.optimizer.param_state)
    assert "transformer.h.0.attn.c_attn.weight::lora_a" in names and "transformer.wte.weight::lora_a" in names
    assert "transformer.h.0.attn.c_attn.weight" not in names  # frozen main weight: no state
    sd = fork["optimizer"].state_dict()
    pos = fork["names"].index("transformer.wte.lora_B.weight")
    assert torch.equal(torchfile.to_torch(ts.optimizer.param_state["transformer.wte.weight::lora_a"]["exp_avg"]), sd["state"][pos]["exp_avg"].T)
    assert ts.step == 3 and ts.config["dataset"] == "shakespeare_char"


def test_merged_universal_save_round_trips_and_says_head_differs(fork, tmp_path):
    with pytest.warns(CkptWarning, match="lm_head.weight unmerged"):
        ck = api.load(fork["dir"] / "merged.pt")
    assert ck.layout.variant == "merged" and not ck.adapters and not ck.ties
    assert "lm_head.weight" in ck.tensors
    api.save(ck, tmp_path / "ckpt.pt", "lora-nanogpt")
    a, b = (torch.load(p, weights_only=True) for p in (fork["dir"] / "merged.pt", tmp_path / "ckpt.pt"))
    assert list(a["model"]) == list(b["model"]) and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["param_names"] == b["param_names"] and a["model_args"] == b["model_args"]
    assert len(b["optimizer"]["state"]) == len(a["optimizer"]["state"])


def test_merged_save_that_lost_a_rank0_weight_is_refused(fork):
    with pytest.raises(CorruptInput, match=r"dropped transformer\.h\.1\.attn\.c_attn\.weight"):
        _quiet_load(fork["dir"] / "merged-rank0.pt")


def test_bare_state_dict_needs_alpha(fork):
    with pytest.raises(UsageError, match="alpha"):
        api.load(fork["dir"] / "bare.pt")
    ck = api.load(fork["dir"] / "bare.pt", options={"alpha": 8.0})
    assert ck.adapters["transformer.wte.weight"].alpha == 8.0 and ck.train_state is None


def _merged_model(ck, config: LoRAConfig) -> LoRAGPT:
    """A plain nanoGPT with the merged tensors (head untied when the checkpoint is)."""
    plain = LoRAGPT(LoRAConfig(**{**asdict(config), "attn_lora_rank": 0, "embedding_mode": "default"}))
    if "lm_head.weight" in ck.tensors:
        plain.lm_head.weight = torch.nn.Parameter(torch.empty_like(plain.lm_head.weight))
    sd = {n: torchfile.to_torch(ck.tensor(n)) for n in ck.names()}
    plain.load_state_dict(sd, strict=True)
    return plain.eval()


def test_merge_matches_the_reference_forward(fork, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CkptWarning)
        ck = api.convert(fork["dir"] / "lora.pt", tmp_path / "merged", "canonical", merge_adapters=True)
    assert not ck.adapters and ck.train_state.step == 3 and "lm_head.weight" not in ck.ties
    model = fork["model"]
    sd = model.state_dict()
    # the untied head keeps the main weight, exactly as the LoRA model's head computes
    assert torch.equal(torchfile.to_torch(ck.tensors["lm_head.weight"]), sd["transformer.wte.main_weight.weight"])
    # the rank-0 layer keeps its weight (the fork's merge drops it)
    assert torch.equal(torchfile.to_torch(ck.tensors["transformer.h.1.attn.c_attn.weight"]), sd["transformer.h.1.attn.c_attn.main_weight.weight"])
    x = batch(model)
    with torch.no_grad():
        torch.testing.assert_close(_merged_model(ck, model.config)(x), model(x), rtol=1e-5, atol=1e-5)


def test_merge_with_tie_kept(fork, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CkptWarning)
        ck = api.convert(fork["dir"] / "lora.pt", tmp_path / "merged", "canonical", {"tied_head": "tie"}, merge_adapters=True)
    assert not ck.adapters and api.load(tmp_path / "merged").ties == ck.ties
    assert ck.ties == {"lm_head.weight": "transformer.wte.weight"}
    model = fork["model"]
    expected = model.transformer.wte.main_weight.weight + model.transformer.wte.delta()
    torch.testing.assert_close(torchfile.to_torch(ck.tensor("lm_head.weight")), expected.detach())


def test_converting_adapters_away_refuses_unless_merged(fork, tmp_path):
    with pytest.raises(LossyConversion, match=r"adapter\(s\) on .*--merge-adapters"):
        api.convert(fork["dir"] / "lora.pt", tmp_path / "m.safetensors", "safetensors", allow_loss=["train_state"])
    assert not (tmp_path / "m.safetensors").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CkptWarning)
        written = api.convert(fork["dir"] / "lora.pt", tmp_path / "m.safetensors", "safetensors", allow_loss=["train_state"],
                              merge_adapters=True)
    assert differences(api.load(tmp_path / "m.safetensors"), written.evolve(layout=api.load(tmp_path / "m.safetensors").layout)) == []
    with pytest.raises(UsageError, match=r"--option merge=true is gone: merge with --merge-adapters"):  # one way to merge
        api.convert(fork["dir"] / "lora.pt", tmp_path / "o.safetensors", "safetensors", {"merge": True}, allow_loss=["train_state"])
    assert not (tmp_path / "o.safetensors").exists()


def test_standard_to_lora_and_back_is_exact(plain, tmp_path):
    dst = tmp_path / "lora.pt"
    with pytest.warns(CkptWarning, match="optimizer state dropped"):
        api.convert(plain["path"], dst, "lora-nanogpt", {"rank": 16, "alpha": 1.0, "targets": "attn,embedding"})
    sd = torch.load(dst, weights_only=True)
    assert sd["model_args"]["attn_lora_rank"] == 16 and sd["model_args"]["embedding_mode"] == "lora"
    assert "optimizer" not in sd and sd["iter_num"] == 3
    model = _load_model(dst)
    x = batch(model)
    assert torch.equal(model(x), plain["model"](x))  # B is zero: the same function
    a = sd["model"]["transformer.h.0.attn.c_attn.lora_A.weight"]
    assert a.abs().max() <= 1 / np.sqrt(a.shape[1]) and a.abs().max() > 0  # kaiming-uniform(a=sqrt(5)) bound
    assert not sd["model"]["transformer.h.0.attn.c_attn.lora_B.weight"].any()
    assert not sd["model"]["transformer.wte.lora_B.weight"].any() and sd["model"]["transformer.wte.lora_A.weight"].std() > 0.5
    # reproducible: the same seed gives the same bytes, another seed other adapters
    again = tmp_path / "again.pt"
    other = tmp_path / "other.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CkptWarning)
        api.convert(plain["path"], again, "lora-nanogpt", {"rank": 16, "targets": "attn,embedding"})
        api.convert(plain["path"], other, "lora-nanogpt", {"rank": 16, "targets": "attn,embedding", "seed": 7})
        back = api.convert(dst, tmp_path / "standard", "canonical", merge_adapters=True)
    key = "transformer.h.0.attn.c_attn.lora_A.weight"
    assert torch.equal(torch.load(again, weights_only=True)["model"][key], a)
    assert not torch.equal(torch.load(other, weights_only=True)["model"][key], a)
    source = api.load(plain["path"])
    for name, t in source.tensors.items():
        assert back.tensor(name).tobytes() == t.tobytes(), name


def test_rank_change_needs_a_choice(fork, tmp_path):
    with pytest.raises(UsageError, match="rank_change=pad.*rank_change=merge"):
        _quiet_convert(fork["dir"] / "lora.pt", tmp_path / "r8.pt", {"rank": 8})
    assert not (tmp_path / "r8.pt").exists()


def _quiet_convert(src, dst, options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CkptWarning)
        return api.convert(src, dst, "lora-nanogpt", options)


def test_rank_change_pad_is_exact(fork, tmp_path):
    with pytest.warns(CkptWarning, match="optimizer state dropped"):
        api.convert(fork["dir"] / "lora.pt", tmp_path / "r8.pt", "lora-nanogpt", {"rank": 8, "rank_change": "pad"})
    ck = api.load(tmp_path / "r8.pt")
    assert ck.train_state.optimizer is None and ck.train_state.step == 3
    old = _quiet_load(fork["dir"] / "lora.pt")
    for name, ad in ck.adapters.items():
        before = old.adapters[name]
        assert ad.rank == 8 and ad.scale == before.scale
        assert ad.a.slice(0, 0, 4).tobytes() == before.a.tobytes() and not torchfile.to_torch(ad.a.slice(0, 4, 8)).any()
        assert ad.b.slice(1, 0, 4).tobytes() == before.b.tobytes()
    model = _load_model(tmp_path / "r8.pt")
    assert model.config.lora_alpha == 16.0
    x = batch(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), fork["model"](x), rtol=0, atol=1e-6)  # zero terms only: float order aside, equal


def test_rank_change_merge_starts_fresh(fork, tmp_path):
    with pytest.warns(CkptWarning) as caught:
        api.convert(fork["dir"] / "lora.pt", tmp_path / "r8.pt", "lora-nanogpt", {"rank": 8, "rank_change": "merge", "alpha": 16.0})
    messages = [str(w.message) for w in caught]
    assert any("merged 3 adapter(s)" in m for m in messages)
    assert any("ties the head" in m for m in messages)  # the head kept the unmerged weight: said, not hidden
    ck = _quiet_load(tmp_path / "r8.pt")
    assert {n: a.rank for n, a in ck.adapters.items()} == {n: 8 for n in ("transformer.wte.weight", "transformer.h.0.attn.c_attn.weight",
                                                                       "transformer.h.2.attn.c_attn.weight")}
    assert all(not (torchfile.to_torch(a.b) @ torchfile.to_torch(a.a)).any() for a in ck.adapters.values())  # fresh: B is zero
    merged = transforms.merge_adapters(_quiet_load(tmp_path / "r8.pt"))
    model = fork["model"]
    x = batch(model)
    with torch.no_grad():
        torch.testing.assert_close(_merged_model(merged, model.config)(x), model(x), rtol=1e-5, atol=1e-5)


def test_optimizer_state_kept_when_parameters_unchanged(fork, tmp_path):
    src = fork["dir"] / "lora.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("error", CkptWarning)
        ck = api.convert(src, tmp_path / "same.pt", "lora-nanogpt", {"rank": 4})
    assert ck.train_state.optimizer is not None
    assert differences(_quiet_load(src), api.load(tmp_path / "same.pt")) == []


def test_optimizer_without_param_names_follows_nanogpt_order(tmp_path):
    model = fork_model()
    for p in model.parameters():
        p.requires_grad_(True)  # nothing frozen: the positions are nanoGPT's AdamW order
    opt, names = train(model, steps=1)
    ck = checkpoint_dict(model, opt, names, universal=False)
    del ck["param_names"]
    torch.save(ck, tmp_path / "ckpt.pt")
    ts = api.train_state(tmp_path / "ckpt.pt")
    state = opt.state_dict()["state"]
    for pos, name in enumerate(names):
        canonical = ts.optimizer.param_state
        key = {"transformer.wte.lora_B.weight": "transformer.wte.weight::lora_a",
               "transformer.wte.lora_A.weight": "transformer.wte.weight::lora_b"}.get(name, name.replace(".main_weight", ""))
        key = key.replace(".lora_A.weight", ".weight::lora_a").replace(".lora_B.weight", ".weight::lora_b")
        got = torchfile.to_torch(canonical[key]["exp_avg"])
        assert torch.equal(got.T if name == "transformer.wte.lora_B.weight" else got, state[pos]["exp_avg"]), name
    api.save(api.load(tmp_path / "ckpt.pt"), tmp_path / "out.pt", "lora-nanogpt")
    assert "param_names" not in torch.load(tmp_path / "out.pt", weights_only=True)  # kept as the file had it


def test_frozen_optimizer_without_param_names_is_dropped_with_a_warning(fork, tmp_path):
    ck = torch.load(fork["dir"] / "lora.pt", weights_only=True)
    del ck["param_names"]
    torch.save(ck, tmp_path / "ckpt.pt")
    with pytest.warns(CkptWarning, match="optimizer state dropped"):
        ts = api.train_state(tmp_path / "ckpt.pt")
    assert ts.optimizer is None and ts.step == 3


@pytest.mark.parametrize("name", ["lora.pt", "merged.pt"])
def test_through_canonical_and_back_is_the_same_file(fork, tmp_path, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CkptWarning)
        api.convert(fork["dir"] / name, tmp_path / "canon", "canonical")
        api.convert(tmp_path / "canon", tmp_path / name, "lora-nanogpt")
    a, b = (torch.load(p, weights_only=True) for p in (fork["dir"] / name, tmp_path / name))
    assert list(a) == list(b)
    assert list(a["model"]) == list(b["model"]) and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["param_names"] == b["param_names"] and a["model_args"] == b["model_args"] and a["config"] == b["config"]
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert all(torch.equal(v, b["optimizer"]["state"][p][k]) for p, s in a["optimizer"]["state"].items() for k, v in s.items())


@pytest.mark.parametrize("empty", [{}, None])
def test_empty_optimizer_means_no_state_and_is_written_back(fork, tmp_path, empty):
    """The fork's dict with the optimizer saved as {} or None: no optimizer state, no
    warning, and the same dict written back (directly and through MLX)."""
    ckpt = {**torch.load(fork["dir"] / "lora.pt", weights_only=True), "optimizer": empty}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CkptWarning)
        ck = api.load(tmp_path / "ckpt.pt")
        assert ck.train_state.optimizer is None and ck.train_state.step == 3
        api.save(ck, tmp_path / "back.pt", "lora-nanogpt")
        api.save(ck, tmp_path / "canon", "canonical")
        api.convert(tmp_path / "canon", tmp_path / "back-canon.pt", "lora-nanogpt")
    for name in ("back.pt", "back-canon.pt"):
        back = torch.load(tmp_path / name, weights_only=True)
        assert list(back) == list(ckpt) and back["optimizer"] == empty and back["param_names"] == ckpt["param_names"]
