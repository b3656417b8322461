"""Teacher -> student (variants A and B) as training initialises it, student -> teacher,
map checks, and round trips of students through other formats."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import ckpt_core
from ckpt_core import CkptWarning, LossyConversion, UsageError, torchfile
from ckpt_core.compare import differences
from ckpt_core.plugins import registry
from ckpt_core.tensor import same_bytes

CLI = [sys.executable, "-m", "ckpt_core"]
L = "model.layers.{}."


def _run(*args):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True)


def _extra_names(ck):
    return {n for n in ck.tensors if "swiftkv" in n}


def test_teacher_to_variant_b_with_tuning_flags(tmp_path, llama_dir):
    out = tmp_path / "student"
    done = _run("convert", llama_dir, out, "--to", "swiftkv", "--option", "kv_sharing_map={2: 1, 3: 1}",
                "--option", "mlp_tuning_enabled=true", "--option", "layernorm_tuning_enabled=true", "--json")
    assert done.returncode == 0, done.stderr
    teacher, student = ckpt_core.load(llama_dir), ckpt_core.load(out)
    assert json.loads(done.stdout)["tensors"] == len(student.tensors)  # what is on disk, not what was read
    assert ckpt_core.detect(out)[0].format == "swiftkv" and "variant B" in ckpt_core.detect(out)[0].reason
    copies = {}
    for c in (2, 3):
        for suffix in ("self_attn.q_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm",
                       "post_attention_layernorm"):
            copies[L.format(c) + suffix + "_swiftkv.weight"] = L.format(c) + suffix + ".weight"
    assert set(student.tensors) == set(teacher.tensors) | set(copies)
    assert "model.norm_swiftkv.weight" not in student.tensors and not any("k_proj_swiftkv" in n for n in student.tensors)
    for new, source in copies.items():
        assert same_bytes(student.tensors[new], teacher.tensors[source]), new
    for name, t in teacher.tensors.items():
        assert same_bytes(student.tensors[name], t), name
    assert student.kv_sharing == {2: 1, 3: 1}
    assert set(student.trainable) == set(copies)
    config = json.loads((out / "config.json").read_text())
    assert config["kv_sharing_map"] == {"2": 1, "3": 1} and config["model_type"] == "llama_swiftkv"
    assert config["architectures"] == ["LlamaSwiftKVForCausalLM"] and config["mlp_tuning_enabled"] is True
    assert (out / "tokenizer.json").read_bytes() == (llama_dir / "tokenizer.json").read_bytes()
    facts = json.loads(_run("inspect", out, "--json").stdout)
    assert facts["trainable"] == len(copies) and facts["kv_sharing"] == {"2": 1, "3": 1}


def test_teacher_to_variant_a_groups_average_k_and_v(tmp_path, qwen3_dir):
    bf16 = tmp_path / "bf16"
    ckpt_core.convert(qwen3_dir, bf16, "hf", cast={"F32": "BF16"})
    out = tmp_path / "student"
    with pytest.warns(CkptWarning, match="averaged"):
        ckpt_core.convert(bf16, out, "swiftkv", {"num_key_value_layers": 2, "key_value_group_size": 2})
    teacher, student = ckpt_core.load(bf16), ckpt_core.load(out)
    assert "variant A" in ckpt_core.detect(out)[0].reason
    h, hd, nh, nkvh = 32, 8, 4, 2
    expected = {"model.norm_swiftkv.weight": (h,)}
    for i in (2, 3):
        expected[L.format(i) + "self_attn.q_proj_swiftkv.weight"] = (nh * hd, h)
        expected[L.format(i) + "self_attn.q_norm_swiftkv.weight"] = (hd,)
    for proj in ("k_proj", "v_proj"):
        expected[L.format(2) + f"self_attn.{proj}_swiftkv.weight"] = (nkvh * hd, h)
    expected[L.format(2) + "self_attn.k_norm_swiftkv.weight"] = (hd,)
    assert {n: student.tensors[n].shape for n in _extra_names(student)} == expected
    assert set(student.tensors) - set(expected) == set(teacher.tensors)
    assert student.ties == teacher.ties == {"lm_head.weight": "model.embed_tokens.weight"}
    assert same_bytes(student.tensors["model.norm_swiftkv.weight"], teacher.tensors[L.format(2) + "input_layernorm.weight"])
    for i in (2, 3):
        for part in ("q_proj", "q_norm"):
            assert same_bytes(student.tensors[L.format(i) + f"self_attn.{part}_swiftkv.weight"],
                              teacher.tensors[L.format(i) + f"self_attn.{part}.weight"])
    for part in ("k_proj", "v_proj", "k_norm"):
        group = [torchfile.to_torch(teacher.tensors[L.format(i) + f"self_attn.{part}.weight"]) for i in (2, 3)]
        mean = (torch.stack([t.float() for t in group]).mean(0)).to(torch.bfloat16)
        assert torch.equal(torchfile.to_torch(student.tensors[L.format(2) + f"self_attn.{part}_swiftkv.weight"]), mean)
    assert student.kv_sharing == {3: 2}
    assert student.arch.params["num_key_value_layers"] == 2 and student.arch.params["key_value_group_size"] == 2
    assert set(student.trainable) == set(expected)
    config = json.loads((out / "config.json").read_text())
    assert (config["model_type"], config["num_key_value_layers"], config["key_value_group_size"]) == ("qwen3_swiftkv", 2, 2)
    assert config["dtype"] == "bfloat16"


def test_variant_a_with_group_one_copies_and_qwen2_biases(tmp_path, qwen2_dir):
    out = tmp_path / "student"
    ckpt_core.convert(qwen2_dir, out, "swiftkv", {"num_key_value_layers": 1})
    teacher, student = ckpt_core.load(qwen2_dir), ckpt_core.load(out)
    for i in (1, 2):
        for part in ("q_proj", "k_proj", "v_proj"):
            for kind in ("weight", "bias"):
                assert same_bytes(student.tensors[L.format(i) + f"self_attn.{part}_swiftkv.{kind}"],
                                  teacher.tensors[L.format(i) + f"self_attn.{part}.{kind}"])
    assert len(_extra_names(student)) == 1 + 2 * 6 and student.kv_sharing == {}


def test_student_to_teacher_needs_drop_swiftkv_then_is_the_teacher(tmp_path, llama_dir, llama_model):
    student = tmp_path / "student"
    ckpt_core.convert(llama_dir, student, "swiftkv", {"num_key_value_layers": 2})
    out = tmp_path / "teacher"
    done = _run("convert", student, out, "--to", "hf")
    assert done.returncode == LossyConversion.exit_code and "trainable set" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()
    done = _run("convert", student, out, "--to", "hf", "--option", "drop_swiftkv=true", "--quiet")
    assert done.returncode == 0, done.stderr
    assert differences(ckpt_core.load(llama_dir), ckpt_core.load(out)) == []
    assert json.loads((out / "config.json").read_text()) == json.loads((llama_dir / "config.json").read_text())
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(AutoModelForCausalLM.from_pretrained(out)(ids).logits, llama_model(ids).logits)


def test_upstream_student_reads_with_int_map_and_round_trips(tmp_path, student_b_dir):
    ck = ckpt_core.load(student_b_dir)
    assert ck.kv_sharing == {2: 1, 3: 1} and all(type(k) is int for k in ck.kv_sharing)
    assert set(ck.trainable) == _extra_names(ck) and len(ck.trainable) == 8
    canon, back = tmp_path / "canon", tmp_path / "back"
    ckpt_core.convert(student_b_dir, canon, "canonical")
    ckpt_core.convert(canon, back, "swiftkv")
    assert differences(ck, ckpt_core.load(back)) == []
    assert json.loads((back / "config.json").read_text()) == json.loads((student_b_dir / "config.json").read_text())
    assert (back / "tokenizer.json").read_bytes() == (student_b_dir / "tokenizer.json").read_bytes()


def test_a_map_that_differs_from_the_checkpoints_own_is_refused(tmp_path, student_b_dir, llama_dir):
    with pytest.raises(UsageError, match=r"kv_sharing_map \{3: 1\}.*kv_sharing_map \{2: 1, 3: 1\}"):
        ckpt_core.load(student_b_dir, options={"kv_sharing_map": {"3": 1}})
    assert ckpt_core.load(student_b_dir, options={"kv_sharing_map": {"2": 1, "3": 1}}).kv_sharing == {2: 1, 3: 1}
    done = _run("convert", student_b_dir, tmp_path / "x", "--to", "swiftkv", "--option", "num_key_value_layers=2")
    assert done.returncode == UsageError.exit_code and "kv_sharing_map {2: 1, 3: 1}" in done.stderr
    assert "num_key_value_layers=2" in done.stderr and not (tmp_path / "x").exists()
    student_a = tmp_path / "a"
    with pytest.warns(CkptWarning, match="averaged"):
        ckpt_core.convert(llama_dir, student_a, "swiftkv", {"num_key_value_layers": 2, "key_value_group_size": 2})
    with pytest.raises(UsageError, match="num_key_value_layers=2, key_value_group_size=1.*num_key_value_layers=2, key_value_group_size=2"):
        ckpt_core.convert(student_a, tmp_path / "y", "swiftkv", {"num_key_value_layers": 2, "key_value_group_size": 1})


@pytest.mark.parametrize("options, message", [
    ({}, "kv_sharing_map="),
    ({"kv_sharing_map": {1: 2}}, "earlier one"),
    ({"kv_sharing_map": {"x": 1}}, "not a layer number"),
    ({"num_key_value_layers": 3, "key_value_group_size": 2}, "does not divide"),
    ({"num_key_value_layers": 4}, "need 1 <="),
    ({"kv_sharing_map": {2: 1}, "key_value_group_size": 2}, "variant A"),
])
def test_bad_student_options_are_usage_errors(tmp_path, llama_dir, options, message):
    with pytest.raises(UsageError, match=message):
        ckpt_core.convert(llama_dir, tmp_path / "out", "swiftkv", options)
    assert not (tmp_path / "out").exists()


def test_student_structure_that_contradicts_its_config_is_corrupt(tmp_path, student_b_dir):
    config = json.loads((student_b_dir / "config.json").read_text())
    config["kv_sharing_map"] = {"2": 1}
    (student_b_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ckpt_core.CorruptInput, match="model.layers.3.mlp.down_proj_swiftkv.weight"):
        ckpt_core.load(student_b_dir)


@pytest.mark.skipif("mlx" not in registry().formats, reason="the mlx plugin is not installed")
def test_round_trip_through_mlx(tmp_path, student_b_dir):
    """mlx keeps weights and train state, not the KV map or the carried files: allowed
    explicitly, the weights come back bit for bit and the map is given again."""
    ck = ckpt_core.load(student_b_dir)
    step = tmp_path / "run" / "step_000100.safetensors"
    step.parent.mkdir()
    ckpt_core.convert(student_b_dir, step, "mlx", allow_loss=["kv_sharing", "extra"])
    back = tmp_path / "back"
    ckpt_core.convert(step, back, "swiftkv", {"kv_sharing_map": {2: 1, 3: 1}, "mlp_tuning_enabled": True},
                      allow_loss=["extra"])
    again = ckpt_core.load(back)
    assert list(again.tensors) == list(ck.tensors)
    assert all(same_bytes(again.tensors[n], t) for n, t in ck.tensors.items())
    assert again.kv_sharing == ck.kv_sharing and again.trainable == ck.trainable


def test_student_read_with_drop_swiftkv_is_a_plain_teacher(tmp_path, student_b_dir):
    """A student is no ``hf`` directory (its model_type is the student's); read with
    ``drop_swiftkv`` it is its teacher, which ``hf`` writes as transformers' own."""
    with pytest.raises(ckpt_core.CorruptInput, match="model_type 'llama_swiftkv'"):
        ckpt_core.load(student_b_dir, "hf")
    ck = ckpt_core.load(student_b_dir, options={"drop_swiftkv": True})
    assert not _extra_names(ck) and ck.kv_sharing == {} and ck.trainable is None
    ckpt_core.save(ck, tmp_path / "teacher", "hf")
    config = json.loads((tmp_path / "teacher" / "config.json").read_text())
    assert (config["model_type"], config["architectures"]) == ("llama", ["LlamaForCausalLM"])
    assert not {"kv_sharing_map", "swiftkv", "mlp_tuning_enabled", "num_key_value_layers"} & set(config)
