"""Llama / Qwen directories: every weight layout transformers has written, detection, and what
the plugin writes loading back into transformers with equal logits."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from hf_reference import TOKENIZER, save_bin
from safetensors import safe_open

import ckpt_core
from ckpt_core import CorruptInput, NotFound, torchfile
from ckpt_core.compare import differences
from ckpt_core.safetensors_io import read_header
from ckpt_core.tensor import same_bytes

CLI = [sys.executable, "-m", "ckpt_core"]


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not (model.config.tie_word_embeddings and k == "lm_head.weight")}


def _assert_matches_model(ck, model):
    state = _state(model)
    assert set(ck.tensors) == set(state)
    for name, t in state.items():
        assert torch.equal(torchfile.to_torch(ck.tensors[name]), t), name


def _logits(directory, ids):
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(directory).eval()(ids).logits


def test_sharded_teacher_reads_every_tensor_and_the_config(llama_dir, llama_model):
    assert len(list(llama_dir.glob("model-*-of-*.safetensors"))) > 3
    found = ckpt_core.detect(llama_dir)
    assert found[0].format == "hf" and "llama" in found[0].reason
    ck = ckpt_core.load(llama_dir)
    _assert_matches_model(ck, llama_model)
    assert ck.arch.family == "llama"
    assert ck.arch.params == {"vocab_size": 64, "n_layer": 4, "n_head": 4, "n_kv_head": 2, "d_model": 32, "d_ff": 48,
                              "head_dim": 8}
    assert ck.ties == {} and ck.kv_sharing == {} and ck.trainable is None
    kept = ck.extra["hf"]
    assert {name: t.tobytes() for name, t in kept["files"].items()} == {
        "generation_config.json": (llama_dir / "generation_config.json").read_bytes(), "tokenizer.json": TOKENIZER}
    assert all(t.file_range is not None for t in kept["files"].values())  # carried unread
    assert kept["config"]["rms_norm_eps"] == llama_model.config.rms_norm_eps


def test_tied_qwen3_keeps_the_tie(qwen3_dir, qwen3_model):
    ck = ckpt_core.load(qwen3_dir)
    assert ck.arch.family == "qwen3" and ck.ties == {"lm_head.weight": "model.embed_tokens.weight"}
    _assert_matches_model(ck, qwen3_model)


def test_shard_names_come_from_the_weight_map(llama_dir, llama_model, tmp_path):
    """ZeRO-3 saves name shards model-00001-00004.safetensors (no -of-)."""
    index = json.loads((llama_dir / "model.safetensors.index.json").read_text())
    renames = {old: old.replace("-of-", "-") for old in set(index["weight_map"].values())}
    for old, new in renames.items():
        (llama_dir / old).rename(llama_dir / new)
    index["weight_map"] = {k: renames[v] for k, v in index["weight_map"].items()}
    (llama_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    _assert_matches_model(ckpt_core.load(llama_dir), llama_model)


def test_teacher_round_trips_through_canonical(tmp_path, llama_dir):
    canon, back = tmp_path / "canon", tmp_path / "back"
    ckpt_core.convert(llama_dir, canon, "canonical")
    ckpt_core.convert(canon, back, "hf")
    assert differences(ckpt_core.load(llama_dir), ckpt_core.load(back)) == []
    for name in ("config.json", "generation_config.json", "tokenizer.json"):
        assert (back / name).read_bytes() == (llama_dir / name).read_bytes(), name


def test_one_shard_with_an_index_as_zero3_writes_it(tmp_path, qwen3_dir, qwen3_model):
    """ZeRO-3 saves write an index even for one shard, with total_size = params x 2."""
    (qwen3_dir / "model.safetensors").rename(qwen3_dir / "model-00001-00001.safetensors")
    names = [n for n in qwen3_model.state_dict() if n != "lm_head.weight"]
    index = {"metadata": {"total_size": 2 * sum(p.numel() for p in qwen3_model.parameters())},
             "weight_map": dict.fromkeys(sorted(names), "model-00001-00001.safetensors")}
    (qwen3_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
    _assert_matches_model(ckpt_core.load(qwen3_dir), qwen3_model)


@pytest.mark.parametrize("shards", [1, 3])
def test_pytorch_model_bin_single_and_sharded(tmp_path, llama_model, llama_dir, shards):
    directory = save_bin(llama_model, tmp_path / "bin", shards)
    assert ckpt_core.detect(directory)[0].format == "hf"
    ck = ckpt_core.load(directory)
    _assert_matches_model(ck, llama_model)
    assert ck.layout.variant == "bin"
    out = tmp_path / "as-safetensors"
    ckpt_core.convert(directory, out, "hf")
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    same = ckpt_core.load(llama_dir)
    assert all(same_bytes(same.tensors[n], t) for n, t in ckpt_core.load(out).tensors.items())


def _stale(model):
    """A copy of ``model`` with other values: what a stale or unrelated weight file holds."""
    import copy

    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.fill_(7.0)
    return other


@pytest.mark.parametrize("case", ["bin beside a stray safetensors", "safetensors beside a stale bin",
                                  "safetensors beside a stale index", "bin beside a stale bin index"])
def test_weights_are_chosen_as_transformers_chooses_them(tmp_path, llama_model, case):
    """transformers' order (from_pretrained): model.safetensors, model.safetensors.index.json,
    pytorch_model.bin, pytorch_model.bin.index.json. ckpt-core reads exactly what
    from_pretrained loads, and inspect names the weight files it leaves alone."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    directory, other = tmp_path / "model", tmp_path / "other"
    if case.startswith("bin"):
        save_bin(llama_model, directory)
    else:
        llama_model.save_pretrained(directory)
    if case == "bin beside a stray safetensors":
        save_file(_state(_stale(llama_model)), str(directory / "adapter.safetensors"))
    elif case == "safetensors beside a stale bin":
        torch.save(_state(_stale(llama_model)), directory / "pytorch_model.bin")
    elif case == "safetensors beside a stale index":
        _stale(llama_model).save_pretrained(other, max_shard_size="20KB")
    else:
        save_bin(_stale(llama_model), other, 3)
    for p in other.glob("*") if other.is_dir() else ():
        if p.name != "config.json":
            shutil.copy(p, directory / p.name)
    chosen = "pytorch_model.bin" if case.startswith("bin") else "model.safetensors"
    ignored = sorted(p.name for p in directory.iterdir() if p.name not in ("config.json", "generation_config.json", chosen))
    ck = ckpt_core.load(directory)
    _assert_matches_model(ck, AutoModelForCausalLM.from_pretrained(directory))
    _assert_matches_model(ck, llama_model)
    out = subprocess.run([*CLI, "inspect", str(directory), "--json"], capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout)["ignored"] == ignored, out.stderr
    text = subprocess.run([*CLI, "inspect", str(directory)], capture_output=True, text=True).stdout
    assert any(line.split()[:2] == ["ignored", "files"] and ignored[0] in line for line in text.splitlines()), text
    ckpt_core.convert(directory, tmp_path / "out", "hf")
    assert not {p.name for p in (tmp_path / "out").iterdir()} & set(ignored)  # ignored: not carried either


def test_config_without_weights_is_not_a_checkpoint(tmp_path, llama_model):
    directory = tmp_path / "config-only"
    llama_model.config.save_pretrained(directory)
    found = ckpt_core.detect(directory)
    assert found[0].format == "hf" and "not a checkpoint" in found[0].reason
    with pytest.raises(NotFound, match="no weight files"):
        ckpt_core.load(directory)


def test_written_teacher_is_hf_standard_and_loads_in_transformers(tmp_path, llama_dir, llama_model):
    out = tmp_path / "out"
    ckpt_core.convert(llama_dir, out, "hf", {"max_shard_size": "30KB"})
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 1 and shards == [f"model-{k:05d}-of-{len(shards):05d}.safetensors" for k in range(1, len(shards) + 1)]
    for shard in shards:
        entries = read_header(out / shard)[0]
        assert sum(end - begin for _, _, begin, end in entries.values()) <= 30_000 or len(entries) == 1
        assert safe_open(out / shard, "pt").metadata() == {"format": "pt"}
    text = (out / "model.safetensors.index.json").read_text()
    index = json.loads(text)
    assert list(index["weight_map"]) == sorted(index["weight_map"]) and text == json.dumps(index, indent=2, sort_keys=True) + "\n"
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in llama_model.state_dict().values())
    assert (out / "tokenizer.json").read_bytes() == TOKENIZER
    assert json.loads((out / "config.json").read_text()) == json.loads((llama_dir / "config.json").read_text())
    ids = torch.tensor([[1, 5, 9, 2, 33, 60]])
    with torch.no_grad():
        expected = llama_model(ids).logits
    assert torch.equal(_logits(out, ids), expected)


@pytest.mark.parametrize("fixture", ["qwen3_dir", "qwen2_dir"])
def test_qwen_teachers_round_trip_and_load(request, tmp_path, fixture):
    src = request.getfixturevalue(fixture)
    ck = ckpt_core.load(src)
    out = tmp_path / "out"
    ckpt_core.save(ck, out, "hf")
    assert differences(ck, ckpt_core.load(out)) == []
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    assert torch.equal(_logits(out, ids), _logits(src, ids))


def test_cast_teacher_loads_with_its_new_dtype(tmp_path, llama_dir):
    out = tmp_path / "bf16"
    ckpt_core.convert(llama_dir, out, "hf", cast={"F32": "BF16"})
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_bad_index_and_config_are_one_line_errors(tmp_path, llama_dir):
    broken = tmp_path / "broken"
    shutil.copytree(llama_dir, broken)
    (broken / "config.json").write_text("{not json")
    assert ckpt_core.detect(broken)[0].format == "hf"
    with pytest.raises(CorruptInput, match="not valid JSON"):
        ckpt_core.load(broken)
    (broken / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CorruptInput, match="model_type 'bert'"):
        ckpt_core.load(broken, "hf")


def test_cli_detect_and_inspect(llama_dir):
    done = subprocess.run([*CLI, "detect", str(llama_dir), "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["detections"][0]["format"] == "hf"
    done = subprocess.run([*CLI, "inspect", str(llama_dir), "--json"], capture_output=True, text=True)
    facts = json.loads(done.stdout)
    assert facts["family"] == "llama" and facts["params"]["n_layer"] == 4 and facts["trainable"] is None


def test_mistral_is_the_llama_family_and_comes_back_as_mistral(tmp_path):
    from hf_reference import make_model, save_teacher

    model = make_model("mistral", sliding_window=4)
    src = save_teacher(model, tmp_path / "mistral")
    found = ckpt_core.detect(src)[0]
    assert found.format == "hf" and "MistralForCausalLM" in found.reason
    ck = ckpt_core.load(src)
    assert ck.arch.family == "llama" and ck.extra["hf"]["config"]["model_type"] == "mistral"
    canonical, out = tmp_path / "canonical", tmp_path / "out"
    ckpt_core.convert(src, canonical, "canonical")
    ckpt_core.convert(canonical, out, "hf")
    assert json.loads((out / "config.json").read_text()) == json.loads((src / "config.json").read_text())
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])  # longer than the sliding window
    logits = _logits(out, ids)
    assert type(_model(out)).__name__ == "MistralForCausalLM" and torch.equal(logits, _logits(src, ids))


def _model(directory):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory)
