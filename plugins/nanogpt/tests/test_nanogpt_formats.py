"""nanoGPT and modded-nanogpt files as the upstream scripts write them: detect, inspect,
exact round trips, conversions across the three layouts, loading into the reference modules."""

from __future__ import annotations

import zipfile

import pytest

torch = pytest.importorskip("torch")

import nanogpt_reference as ref  # noqa: E402
from nanogpt_helpers import load, run, run_json, same_bytes, same_tree, shares_storage, state_dict  # noqa: E402

import ckpt_core  # noqa: E402
from ckpt_core.compare import differences  # noqa: E402
from ckpt_plugin_nanogpt import plugin  # noqa: E402
from ckpt_core import torchfile  # noqa: E402

DIFFERENT = "modded-nanogpt is not nanoGPT"


@pytest.mark.parametrize("name, fmt, confidence, words", [
    ("nanogpt", "nanogpt", 0.9, ["nanoGPT ckpt.pt dict", "'_orig_mod.' prefix"]),
    ("nanogpt_bias", "nanogpt", 0.9, ["nanoGPT ckpt.pt dict"]),
    ("nanogpt_bare", "nanogpt", 0.8, ["bare nanoGPT"]),
    ("modded", "modded-nanogpt", 0.9, ["qkv_w layout", "'_orig_mod.' prefix"]),
    ("modded_bare", "modded-nanogpt", 0.8, ["bare modded-nanogpt"]),
    ("medium", "modded-nanogpt-medium", 0.9, ["qkvo_w layout"]),
    ("medium_bare", "modded-nanogpt-medium", 0.8, ["bare modded-nanogpt medium", "'_orig_mod.' prefix"]),
])
def test_detect_names_format_and_layout(upstream, name, fmt, confidence, words):
    best = ckpt_core.detect(upstream[name])[0]
    assert (best.format, best.confidence) == (fmt, confidence)
    assert all(w in best.reason for w in words), best.reason


def test_detect_reads_no_tensor_data(upstream, tmp_path):
    """Every tensor byte overwritten: the zip directory and data.pkl still tell the format."""
    path = tmp_path / "ckpt.pt"
    path.write_bytes(upstream["nanogpt"].read_bytes())
    with zipfile.ZipFile(path) as zf:
        members = [i for i in zf.infolist() if "/data/" in i.filename]
    with open(path, "r+b") as f:
        for info in members:
            f.seek(info.header_offset + 26)
            name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
            f.seek(info.header_offset + 30 + name_len + extra_len)
            f.write(b"\xff" * info.file_size)
    best = ckpt_core.detect(path)[0]
    assert best.format == "nanogpt" and best.confidence == 0.9


def test_lora_fork_files_are_left_to_the_lora_plugin(upstream, tmp_path):
    """The LoRA fork's files: main_weight/lora_A keys, or param_names and LoRA model_args."""
    ckpt = load(upstream["nanogpt"])
    sd = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    w = sd.pop("transformer.h.0.attn.c_attn.weight")
    lora_model = {**sd, "transformer.h.0.attn.c_attn.main_weight.weight": w,
                  "transformer.h.0.attn.c_attn.lora_A.weight": torch.zeros(2, 32),
                  "transformer.h.0.attn.c_attn.lora_B.weight": torch.zeros(96, 2)}
    merged = {**ckpt, "param_names": list(sd)}
    settings = {**ckpt, "model_args": {**ckpt["model_args"], "attn_lora_rank": 2, "embedding_mode": "none"}}
    for i, obj in enumerate([{**ckpt, "model": lora_model}, lora_model, merged, settings]):
        path = tmp_path / f"lora{i}.pt"
        torch.save(obj, path)
        assert plugin.detect(path) is None, i


def test_inspect_prints_hyper_parameters_and_train_state(upstream, capsys):
    facts = run_json(capsys, "inspect", upstream["nanogpt"])
    p = facts["params"]
    assert (p["n_layer"], p["n_head"], p["d_model"], p["vocab_size"], p["block_size"], p["bias"]) == (2, 2, 32, 64, 16, False)
    assert facts["ties"] == {"lm_head.weight": "transformer.wte.weight"}
    state = facts["train_state"]
    assert state["step"] == 3 and isinstance(state["best_metric"], float)
    assert state["optimizer"] == {"kind": "adamw", "parameters": 15, "resumable": True}
    assert run_json(capsys, "inspect", upstream["nanogpt_bias"])["params"]["bias"] is True

    code, out, err = run(capsys, "inspect", upstream["modded"])
    assert code == 0 and DIFFERENT in err
    for line in ("n_layer", "d_model", "padded_vocab_size", "layers_without_attention  [2]", "n_scalars", "scalars_padding"):
        assert line in out, line
    assert "not resumable" in out
    p = run_json(capsys, "inspect", upstream["modded"])["params"]
    assert (p["n_scalars"], p["scalars_padding"], p["vocab_size"], p["padded_vocab_size"]) == (24, 4, 64, 64)
    p = run_json(capsys, "inspect", upstream["medium"])["params"]
    assert (p["n_scalars"], p["vocab_size"], p["padded_vocab_size"], p["n_value_embeds"]) == (20, 61, 64, 2)
    assert "scalars_padding" not in p


@pytest.mark.parametrize("name", ["nanogpt", "nanogpt_bias", "nanogpt_bare", "modded", "modded_bare", "medium", "medium_bare"])
def test_same_format_round_trip_is_byte_exact(upstream, tmp_path, name):
    src = upstream[name]
    fmt = ckpt_core.detect(src)[0].format
    dst = tmp_path / src.name
    ckpt_core.convert(src, dst, fmt)
    a, b = load(src), load(dst)
    assert same_tree(dict(a), dict(b)), "the file as torch loads it differs"
    assert "ckpt_core" not in b
    sd = b["model"] if "model" in b else b
    if name.startswith("nanogpt"):
        prefix = "_orig_mod." if name == "nanogpt" else ""
        assert shares_storage(sd[prefix + "transformer.wte.weight"], sd[prefix + "lm_head.weight"])


def test_orig_mod_prefix_kept_by_default_stripped_when_asked(upstream, tmp_path):
    src = upstream["nanogpt"]
    ckpt_core.convert(src, tmp_path / "kept.pt", "nanogpt")
    ckpt_core.convert(src, tmp_path / "stripped.pt", "nanogpt", {"orig_mod_prefix": False})
    ckpt_core.convert(upstream["nanogpt_bare"], tmp_path / "added.pt", "nanogpt", {"orig_mod_prefix": True})
    assert all(k.startswith("_orig_mod.") for k in load(tmp_path / "kept.pt")["model"])
    assert not any(k.startswith("_orig_mod.") for k in load(tmp_path / "stripped.pt")["model"])
    assert all(k.startswith("_orig_mod.") for k in load(tmp_path / "added.pt"))
    assert differences(ckpt_core.load(src), ckpt_core.load(tmp_path / "stripped.pt")) == []


def _modded(path, qkvo: bool):
    sd = state_dict(path)
    model = ref.ModdedQKVO(ref.ModdedConfig(), n_scalars=sd["scalars"].numel()) if qkvo else ref.ModdedQKV(ref.ModdedConfig())
    model.load_state_dict(sd, strict=True, assign=True)  # assign: keep the file's dtypes
    return model


def test_qkv_to_qkvo_and_back_is_exact_and_computes_the_same(upstream, tmp_path, capsys):
    src = upstream["modded"]
    code, _, err = run(capsys, "convert", src, tmp_path / "medium.pt", "--to", "modded-nanogpt-medium")
    assert code == 0, err
    out = state_dict(tmp_path / "medium.pt")
    assert out["blocks.0.attn.qkvo_w"].shape == (4, 32, 32) and out["blocks.0.attn.qkvo_w"].dtype == torch.float32
    assert "blocks.2.attn.qkvo_w" not in out  # the layer without attention stays without
    x, _ = ref.batch(99, 64, 16)
    assert torch.equal(_modded(src, qkvo=False)(x)[0], _modded(tmp_path / "medium.pt", qkvo=True)(x)[0])

    code, _, err = run(capsys, "convert", tmp_path / "medium.pt", tmp_path / "back.pt", "--to", "modded-nanogpt")
    assert code == 0, err
    assert same_tree(dict(load(src)), dict(load(tmp_path / "back.pt")))  # scalars padding, code, optimizers: all of it


def test_qkvo_to_qkv_and_back_is_exact(upstream, tmp_path):
    src = upstream["medium"]
    ckpt_core.convert(src, tmp_path / "qkv.pt", "modded-nanogpt")
    sd = state_dict(tmp_path / "qkv.pt")
    assert sd["blocks.0.attn.qkv_w"].dtype == torch.bfloat16 and sd["lm_head.weight"].shape == (64, 32)
    model = ref.ModdedQKV(ref.ModdedConfig(vocab_size=61, world_size=5))  # the medium's 5L scalars, no padding
    model.load_state_dict(sd, strict=True, assign=True)
    x, _ = ref.batch(7, 61, 16)
    qkvo = ref.ModdedQKVO(ref.ModdedConfig(vocab_size=61))
    qkvo.load_state_dict(state_dict(src), strict=True, assign=True)
    assert torch.equal(model(x)[0], qkvo(x)[0])
    ckpt_core.convert(tmp_path / "qkv.pt", tmp_path / "back.pt", "modded-nanogpt-medium")
    assert same_tree(dict(load(src)), dict(load(tmp_path / "back.pt")))


def test_nanogpt_to_modded_and_back(upstream, tmp_path, capsys):
    src = upstream["nanogpt"]
    code, _, err = run(capsys, "convert", src, tmp_path / "m.pt", "--to", "modded-nanogpt")
    assert code == 7 and "drop_unmapped" in err and len(err.strip().splitlines()) == 1
    assert "transformer.wpe.weight" in err and "transformer.h.0.ln_1.weight" in err and "optimizer state" in err
    assert not (tmp_path / "m.pt").exists()
    code, _, err = run(capsys, "convert", src, tmp_path / "m.pt", "--to", "modded-nanogpt",
                       "-o", "drop_unmapped=true", "-o", "fill_missing=true")
    assert code == 0, err
    assert DIFFERENT in err and "dropped" in err
    model = ref.ModdedQKV(ref.ModdedConfig(n_value_embeds=0, no_attention=(), n_layer=2, world_size=1))
    model.load_state_dict(state_dict(tmp_path / "m.pt"), strict=True)
    original = state_dict(src)
    out = state_dict(tmp_path / "m.pt")
    assert same_bytes(out["blocks.1.attn.qkv_w"].reshape(96, 32), original["transformer.h.1.attn.c_attn.weight"])
    assert shares_storage(out["embed.weight"], out["lm_head.weight"])

    code, _, err = run(capsys, "convert", tmp_path / "m.pt", tmp_path / "n.pt", "--to", "nanogpt",
                       "-o", "drop_unmapped=true", "-o", "fill_missing=true", "-o", "block_size=16")
    assert code == 0, err
    back = state_dict(tmp_path / "n.pt")
    nano = ref.NanoGPT(ref.GPTConfig())
    nano.load_state_dict(back, strict=True)
    for name in ("transformer.wte.weight", "transformer.h.0.attn.c_attn.weight", "transformer.h.1.attn.c_proj.weight",
                 "transformer.h.1.mlp.c_fc.weight", "transformer.h.0.mlp.c_proj.weight", "lm_head.weight"):
        assert same_bytes(back[name], original[name]), name
    assert torch.equal(back["transformer.h.0.ln_1.weight"], torch.ones(32))
    assert torch.equal(back["transformer.wpe.weight"], torch.zeros(16, 32))
    assert load(tmp_path / "n.pt")["model_args"]["n_head"] == 2  # carried through the modded file


def test_modded_to_nanogpt(upstream, tmp_path, capsys):
    src = upstream["modded"]
    code, _, err = run(capsys, "convert", src, tmp_path / "n.pt", "--to", "nanogpt", "-o", "drop_unmapped=true")
    assert code == 7 and "fill_missing" in err
    code, _, err = run(capsys, "convert", src, tmp_path / "n.pt", "--to", "nanogpt", "-o", "fill_missing=true", "-o", "block_size=16")
    assert code == 7 and "value_embeds.0.weight" in err and "scalars" in err and "optimizer state" in err
    code, _, err = run(capsys, "convert", src, tmp_path / "n.pt", "--to", "nanogpt",
                       "-o", "drop_unmapped=true", "-o", "fill_missing=true", "-o", "block_size=16")
    assert code == 0, err
    assert DIFFERENT in err
    out = state_dict(tmp_path / "n.pt")
    nano = ref.NanoGPT(ref.GPTConfig(n_layer=4))
    del nano.lm_head.weight  # modded heads are not tied: give the reference its own head
    nano.lm_head.weight = torch.nn.Parameter(torch.empty(64, 32))
    nano.load_state_dict(out, strict=True)
    qkv = state_dict(src)
    assert same_bytes(out["transformer.h.0.attn.c_attn.weight"], qkv["blocks.0.attn.qkv_w"].reshape(96, 32))
    assert not out["transformer.h.2.attn.c_attn.weight"].any()  # the layer without attention: zeros

    code, _, err = run(capsys, "convert", upstream["medium"], tmp_path / "m.pt", "--to", "nanogpt",
                       "-o", "drop_unmapped=true", "-o", "fill_missing=true", "-o", "block_size=16")
    assert code == 7 and "[61, 32]" in err and "[64, 32]" in err


@pytest.mark.parametrize("name", ["nanogpt", "nanogpt_bias", "modded", "medium"])
def test_through_canonical_and_safetensors(upstream, tmp_path, name):
    src = upstream[name]
    fmt = ckpt_core.detect(src)[0].format
    ckpt_core.convert(src, tmp_path / "canon", "canonical")
    ckpt_core.convert(tmp_path / "canon", tmp_path / "back.pt", fmt)
    assert same_tree(dict(load(src)), dict(load(tmp_path / "back.pt")))

    ckpt_core.convert(src, tmp_path / "w.safetensors", "safetensors", allow_loss=["train_state", "extra"])
    ckpt_core.convert(tmp_path / "w.safetensors", tmp_path / "weights.pt", fmt)
    assert ckpt_core.detect(tmp_path / "weights.pt")[0].format == fmt
    original, weights = state_dict(src), state_dict(tmp_path / "weights.pt")
    assert list(original) == list(weights) and all(same_bytes(original[k], weights[k]) for k in original)


def test_dtypes_kept_and_changed_only_when_asked(upstream, tmp_path):
    ck = ckpt_core.load(upstream["modded"])
    q = ck.tensors["blocks.0.attn.q.weight"]
    mixed = ck.evolve(tensors={**ck.tensors, "blocks.0.attn.q.weight": q.reshape(q.shape)})
    bf16 = ckpt_core.load(upstream["medium"]).tensors["blocks.0.attn.q.weight"]
    mixed = ck.evolve(tensors={**ck.tensors, "blocks.0.attn.q.weight": bf16})
    with pytest.raises(ckpt_core.LossyConversion, match=r"--cast"):
        ckpt_core.save(mixed, tmp_path / "mixed.pt", "modded-nanogpt")
    assert not (tmp_path / "mixed.pt").exists()
    ckpt_core.save(mixed, tmp_path / "cast.pt", "modded-nanogpt", cast={"F32": "BF16"})
    sd = state_dict(tmp_path / "cast.pt")
    assert sd["blocks.0.attn.qkv_w"].dtype == torch.bfloat16 and sd["scalars"].dtype == torch.bfloat16


def test_mask_buffer_and_biases(upstream):
    ck = ckpt_core.load(upstream["nanogpt_bias"])
    assert ck.tensors["transformer.h.0.attn.bias"].shape == (1, 1, 16, 16)
    assert ck.tensors["transformer.h.0.attn.c_attn.bias"].shape == (96,)
    opt = ck.train_state.optimizer
    assert "transformer.h.0.attn.bias" not in opt.param_state  # a buffer, not a parameter
    assert "transformer.h.0.attn.c_attn.bias" in opt.groups[1]["params"]
    assert opt.groups[0]["params"][:2] == ["transformer.wte.weight", "transformer.wpe.weight"]
    for name, slots in opt.param_state.items():
        assert slots["exp_avg"].shape == ck.tensors[name].shape, name


def test_modded_train_state(upstream):
    ck = ckpt_core.load(upstream["modded"])
    assert ck.train_state.step == 3
    assert ck.extra["modded-nanogpt"]["code"] == ref.CODE
    opt = ck.train_state.optimizer
    assert opt.kind == "modded-nanogpt" and not opt.resumable and len(opt.extra["optimizers"]) == 2


def test_2026_optimizer_is_refused_or_skipped_without_running_anything(upstream, tmp_path, capsys):
    marker = tmp_path / "ran"
    model = ref.ModdedQKV(ref.ModdedConfig())
    src = ref.save_modded_2026(model, 5, tmp_path / "logs", marker)
    assert ckpt_core.detect(src)[0].format == "modded-nanogpt"
    code, _, err = run(capsys, "inspect", src)
    assert code == 6 and "nanogpt_reference.ScriptOptimizerState" in err and "model_only" in err
    code, _, err = run(capsys, "convert", src, tmp_path / "canon", "--to", "canonical", "-o", "model_only=true",
                       "--allow-loss", "optimizer_state")
    assert code == 0, err
    assert "dropped optimizer" in err and not marker.exists()
    ck = ckpt_core.load(tmp_path / "canon")
    assert ck.train_state.step == 5 and ck.train_state.optimizer is None and ck.extra["modded-nanogpt"]["code"] == ref.CODE
    for name, t in model.state_dict().items():
        key = name.replace("attn.c_proj", "attn.o").replace("c_fc", "fc").replace("mlp.c_proj", "mlp.proj")
        if name.endswith("qkv_w"):
            assert torch.equal(torchfile.to_torch(ck.tensors[key.replace("qkv_w", "q.weight")]), t[0])
        else:
            assert same_bytes(torchfile.to_torch(ck.tensors[key]), t), name
    assert not marker.exists()


@pytest.mark.parametrize("key, shape, what", [
    ("blocks.0.attn.qkvo_w", (32, 128), "qkvo_w stored as [32, 128]"),
    ("blocks.0.mlp.c_fc", (32, 128), "bare (transposed) mlp.c_fc"),
    ("attn_bank", (4, 32, 32), "parameter banks"),
])
def test_unsupported_variants_are_refused_not_misread(tmp_path, capsys, key, shape, what):
    sd = {"_orig_mod.embed.weight": torch.zeros(64, 32), f"_orig_mod.{key}": torch.zeros(shape),
          "_orig_mod.lm_head_w": torch.zeros(64, 32)}
    path = tmp_path / "state_step000100.pt"
    torch.save({"step": 100, "code": "", "model": sd, "optimizers": []}, path)
    code, _, err = run(capsys, "inspect", path)
    assert code == 4 and what in err and len(err.strip().splitlines()) == 1


def test_older_nanogpt_file_round_trips_as_it_is(upstream, tmp_path, capsys):
    """No config, model_args without vocab_size and bias, untied embeddings, no prefix."""
    ckpt = load(upstream["nanogpt_bias"])
    ckpt["model"]["lm_head.weight"] = ckpt["model"]["lm_head.weight"].clone() * 2
    del ckpt["config"], ckpt["optimizer"]  # (a tied model's optimizer state does not fit an untied one)
    for key in ("vocab_size", "bias"):
        del ckpt["model_args"][key]
    path = tmp_path / "old" / "ckpt.pt"
    path.parent.mkdir()
    torch.save(ckpt, path)
    p = run_json(capsys, "inspect", path)["params"]
    assert (p["vocab_size"], p["bias"]) == (64, True)
    ck = ckpt_core.load(path)
    assert ck.ties == {} and ck.train_state.config == {}
    ckpt_core.convert(path, tmp_path / "back.pt", "nanogpt")
    back = load(tmp_path / "back.pt")
    assert same_tree(dict(ckpt), dict(back)) and list(back["model_args"]) == list(ckpt["model_args"])
    assert not shares_storage(back["model"]["transformer.wte.weight"], back["model"]["lm_head.weight"])


def test_pre_2025_07_separate_scalar_tensors(upstream, tmp_path, capsys):
    """Before 2025-07 the scalars were separate tensors (skip_weights, blocks.{i}.lambdas,
    blocks.{i}.attn.lambdas): read and written back exactly; qkvo has no slot for them."""
    ckpt = load(upstream["modded"])
    sd = {k: v for k, v in ckpt["model"].items() if k != "_orig_mod.scalars"}
    sd["_orig_mod.skip_weights"] = torch.tensor([0.25, 0.75])
    for i in range(4):
        sd[f"_orig_mod.blocks.{i}.lambdas"] = torch.tensor([1.0, 0.0])
        if i != 2:
            sd[f"_orig_mod.blocks.{i}.attn.lambdas"] = torch.tensor([0.5, 0.5])
    ckpt["model"] = sd
    path = tmp_path / "state_step000003.pt"
    torch.save(ckpt, path)
    ckpt_core.convert(path, tmp_path / "back.pt", "modded-nanogpt")
    assert same_tree(dict(ckpt), dict(load(tmp_path / "back.pt")))
    code, _, err = run(capsys, "convert", path, tmp_path / "m.pt", "--to", "modded-nanogpt-medium")
    assert code == 7 and "skip_weights" in err and "blocks.0.lambdas" in err


@pytest.mark.parametrize("empty", [{"optimizer": {}}, {"optimizer": None, "best_val_loss": None, "config": {}}])
def test_empty_optimizer_and_unset_fields_mean_no_state(upstream, tmp_path, capsys, empty):
    """train.py's dict with an optimizer saved as {} (a script that drops its state) or None,
    no validation loss yet, an empty config: nothing there, read without complaint, and
    written back as it was (through MLX too)."""
    ckpt = {**load(upstream["nanogpt"]), **empty}
    path = tmp_path / "ckpt.pt"
    torch.save(ckpt, path)
    ck = ckpt_core.load(path)
    assert ck.train_state.step == 3 and ck.train_state.optimizer is None
    code, out, err = run(capsys, "inspect", path)
    assert code == 0 and err == ""
    ckpt_core.convert(path, tmp_path / "mlx", "mlx")
    for back in (tmp_path / "back.pt", tmp_path / "back-mlx.pt"):
        ckpt_core.convert(path if back.name == "back.pt" else tmp_path / "mlx", back, "nanogpt")
        assert same_tree(ckpt, load(back)), back.name
