"""mlx-lm model directories against the real libraries: what is written loads in mlx-lm
and computes what mlx-lm's own load of the source computes, quantized directories made
by ``mlx_lm.convert`` round-trip bit for bit and unpack exactly as ``mx.dequantize``, and
Hugging Face directories go through mlx-lm and back unchanged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import QUANTIZED, mlx_convert, save_hf

import ckpt_core
from ckpt_core import CorruptInput, LossyConversion, UsageError, dtypes
from ckpt_core.tensor import same_bytes
from ckpt_plugin_mlx_lm.quantized import dequantize, unpack

mx = pytest.importorskip("mlx.core")
import torch  # noqa: E402
import transformers  # noqa: E402
from mlx_lm.utils import dequantize_model, load_model  # noqa: E402

CLI = [sys.executable, "-m", "ckpt_core"]
TOKENS = [[1, 5, 9, 17, 33, 2, 60, 7]]
CARRIED = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")
MX_DTYPES = {"BF16": mx.bfloat16, "F16": mx.float16, "F32": mx.float32}


def logits(directory: Path) -> np.ndarray:
    """mlx-lm's logits for ``TOKENS`` from the model it loads from ``directory``."""
    model, _ = load_model(Path(directory))
    return np.array(model(mx.array(TOKENS)).astype(mx.float32))


def raw(a) -> np.ndarray:
    """An mlx array's raw words (bf16 as uint16)."""
    return np.array(a.view(mx.uint16) if a.dtype in (mx.bfloat16, mx.float16) else a.view(mx.uint32))


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def tensors_identical(a: Path, b: Path) -> bool:
    ca, cb = ckpt_core.load(a), ckpt_core.load(b)
    return list(ca.tensors) == list(cb.tensors) and all(same_bytes(ca.tensors[n], cb.tensors[n]) for n in ca.tensors)


# -- Hugging Face -> mlx-lm -> Hugging Face -----------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_hf_to_mlx_lm_loads_in_mlx_lm_with_the_logits_of_the_source(hf_models, tmp_path, family):
    """What is written loads with mlx_lm.utils.load_model (strict) and gives exactly the
    logits mlx-lm's own load of the HF source gives; the tokenizer files are the source's."""
    out = tmp_path / "mlx"
    ckpt_core.convert(hf_models[family], out, "mlx-lm")
    assert ckpt_core.detect(out)[0].format == "mlx-lm"
    np.testing.assert_array_equal(logits(out), logits(hf_models[family]))
    for name in CARRIED:
        assert (out / name).read_bytes() == (hf_models[family] / name).read_bytes(), name
    index = json.loads((out / "model.safetensors.index.json").read_text())
    converted = json.loads((mlx_convert(hf_models[family], tmp_path / "by-mlx-lm") / "model.safetensors.index.json").read_text())
    assert index["metadata"] == converted["metadata"]  # total_size and total_parameters as mlx-lm counts them
    assert index["weight_map"] == converted["weight_map"]


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_hf_to_mlx_lm_to_hf_is_bit_exact(hf_models, tmp_path, family):
    """HF -> mlx-lm -> HF: the same tensors bit for bit, config.json and every other file
    byte for byte; transformers loads the result (no missing or unexpected keys) with the
    source's logits, and its tokenizer encodes as the source's."""
    source = hf_models[family]
    ckpt_core.convert(source, tmp_path / "mlx", "mlx-lm")
    ckpt_core.convert(tmp_path / "mlx", tmp_path / "hf", "hf")
    assert tensors_identical(source, tmp_path / "hf")
    got, want = files(tmp_path / "hf"), files(source)
    assert set(got) == set(want)
    for name in set(want) - {"model.safetensors"}:
        assert got[name] == want[name], name
    model, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = torch.tensor(TOKENS)
    torch.testing.assert_close(model(ids).logits, transformers.AutoModelForCausalLM.from_pretrained(source)(ids).logits,
                               rtol=0, atol=0)
    text = "w1 w2 w60 w7"
    assert (transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")(text)["input_ids"]
            == transformers.AutoTokenizer.from_pretrained(source)(text)["input_ids"])


def test_mlx_lm_to_hf_from_mlx_lm_convert(hf_models, mlx_models, tmp_path):
    """A directory mlx_lm.convert wrote converts to HF: transformers loads it, the tensors
    are the HF source's (mlx-lm kept them), config.json means the same."""
    ckpt_core.convert(mlx_models["plain"], tmp_path / "hf", "hf")
    assert tensors_identical(hf_models["llama"], tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text()) == json.loads((hf_models["llama"] / "config.json").read_text())
    _, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


# -- mlx-lm -> canonical -> mlx-lm ------------------------------------------------------------


@pytest.mark.parametrize("name", ["plain", *(f"q{b}g{g}" for b, g in QUANTIZED)])
def test_mlx_lm_canonical_mlx_lm_is_bit_exact(mlx_models, tmp_path, name):
    """A directory mlx_lm.convert wrote (quantized or not) -> canonical -> mlx-lm: every
    tensor bit for bit (packed weights as they are), config.json, the index and every other
    file byte for byte, and mlx-lm computes the same logits from it."""
    source = mlx_models[name]
    ckpt_core.convert(source, tmp_path / "canonical", "canonical")
    ckpt_core.convert(tmp_path / "canonical", tmp_path / "mlx", "mlx-lm")
    assert tensors_identical(source, tmp_path / "mlx")
    got, want = files(tmp_path / "mlx"), files(source)
    assert set(got) == set(want)
    for file in set(want) - {"model.safetensors"}:
        assert got[file] == want[file], file
    np.testing.assert_array_equal(logits(tmp_path / "mlx"), logits(source))


def test_sharded_directory_loads_in_mlx_lm(mlx_models, tmp_path):
    """Written in several shards (as mlx-lm names them, with its index), it loads in mlx-lm
    with the same logits and reads back bit for bit."""
    ckpt_core.convert(mlx_models["q4g32"], tmp_path / "mlx", "mlx-lm", {"max_shard_size": "20KB"})
    shards = sorted(p.name for p in (tmp_path / "mlx").glob("model*.safetensors"))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / "mlx" / "model.safetensors.index.json").read_text())
    assert index["metadata"] == json.loads((mlx_models["q4g32"] / "model.safetensors.index.json").read_text())["metadata"]
    np.testing.assert_array_equal(logits(tmp_path / "mlx"), logits(mlx_models["q4g32"]))
    assert tensors_identical(mlx_models["q4g32"], tmp_path / "mlx")


# -- dequantizing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_dequantize_is_mx_dequantize_bit_for_bit(dtype, bits, group_size):
    """numpy's unpacking equals mx.dequantize on what mx.quantize packs, and on random
    words, scales and biases (any bit pattern a file may hold, not only what quantizing gives)."""
    mx.random.seed(bits * 1000 + group_size)
    x = (mx.random.normal((24, 512)) * 4).astype(MX_DTYPES[dtype])
    w, s, b = mx.quantize(x, group_size=group_size, bits=bits)
    got = dequantize(np.array(w), raw(s), raw(b), dtype, group_size, bits)
    np.testing.assert_array_equal(got, raw(mx.dequantize(w, s, b, group_size=group_size, bits=bits)))
    rng = np.random.default_rng(bits)
    words = rng.integers(0, 2**32, size=w.shape, dtype=np.uint32)
    scales, biases = (dtypes.from_float32(rng.normal(0, 8, size=s.shape).astype(np.float32), dtype) for _ in range(2))
    mx_of = {"BF16": lambda a: mx.array(a).view(mx.bfloat16), "F16": lambda a: mx.array(a).view(mx.float16),
             "F32": lambda a: mx.array(a).view(mx.float32)}[dtype]
    want = mx.dequantize(mx.array(words), mx_of(scales), mx_of(biases), group_size=group_size, bits=bits)
    np.testing.assert_array_equal(dequantize(words, scales, biases, dtype, group_size, bits), raw(want))


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_unpack_gives_the_integers_mlx_packed(bits):
    """Integers on an exact grid (each group spanning 0 .. 2**bits - 1) come back exactly:
    unpacking keeps every value in its place, whatever sign mlx gives the scale."""
    q = np.random.default_rng(bits).integers(0, 2**bits, size=(4, 64)).astype(np.float32)
    q[:, [0, 32]], q[:, [31, 63]] = 0, 2**bits - 1
    w, s, b = mx.quantize(mx.array(q), group_size=32, bits=bits)
    values = unpack(np.array(w), bits).astype(np.float32)
    scales, biases = (np.repeat(np.array(a), 32, axis=-1) for a in (s, b))
    np.testing.assert_array_equal(scales * values + biases, q)
    np.testing.assert_array_equal(dequantize(np.array(w), raw(s), raw(b), "F32", 32, bits).view(np.float32), q)


@pytest.mark.parametrize("name", [f"q{b}g{g}" for b, g in QUANTIZED])
def test_quantized_to_hf_with_dequantize(mlx_models, tmp_path, name):
    """A directory mlx_lm.convert quantized -> HF with dequantize=true: transformers loads
    it (no missing or unexpected keys), every weight is what mx.dequantize gives for its
    module (and what mlx-lm's own dequantize_model gives), the config has no quantization
    left, and the tokenizer files are the source's."""
    source = mlx_models[name]
    ckpt_core.convert(source, tmp_path / "hf", "hf", {"dequantize": True})
    model, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert "quantization" not in config and "quantization_config" not in config
    for file in CARRIED:
        assert (tmp_path / "hf" / file).read_bytes() == (source / file).read_bytes()
    packed = mx.load(str(source / "model.safetensors"))
    quantization = json.loads((source / "config.json").read_text())["quantization"]
    written = ckpt_core.load(tmp_path / "hf")
    unpacked = 0
    for module in [n[:-len(".scales")] for n in packed if n.endswith(".scales")]:
        want = mx.dequantize(packed[module + ".weight"], packed[module + ".scales"], packed[module + ".biases"],
                             group_size=quantization["group_size"], bits=quantization["bits"])
        np.testing.assert_array_equal(written.tensor(module + ".weight").raw(), raw(want))
        unpacked += 1
    assert unpacked == 16  # 7 linear layers x 2 blocks, the embedding, the head
    mlx_model, _ = load_model(source)
    for module_name, value in _flatten(dequantize_model(mlx_model).parameters()):
        np.testing.assert_array_equal(written.tensor(module_name).raw(), raw(value), err_msg=module_name)
    loaded = model.model.embed_tokens.weight.detach().view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(loaded, written.tensor("model.embed_tokens.weight").raw())  # what transformers holds


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flatten(v, f"{prefix}{k}.")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _flatten(v, f"{prefix}{i}.")
    else:
        yield prefix[:-1], tree


def test_quantized_to_hf_is_refused_without_dequantize(mlx_models, tmp_path):
    """Without the option: refused before writing (exit 7), naming the packing and the
    option; nothing written, the source unchanged."""
    before = files(mlx_models["q4g32"])
    done = subprocess.run([*CLI, "convert", str(mlx_models["q4g32"]), str(tmp_path / "hf"), "--to", "hf"],
                          capture_output=True, text=True)
    assert done.returncode == LossyConversion.exit_code
    assert "--option dequantize=true" in done.stderr and "bits 4, group_size 32" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "hf").exists() and files(mlx_models["q4g32"]) == before
    with pytest.raises(LossyConversion):
        ckpt_core.convert(mlx_models["q4g32"], tmp_path / "st.safetensors", "nanogpt")


def test_dequantize_to_mlx_lm_gives_what_mlx_lm_dequantizes(mlx_models, tmp_path):
    """mlx-lm -> mlx-lm with dequantize=true: an unquantized directory mlx-lm loads, with the
    logits of mlx-lm's own dequantize_model of the source."""
    ckpt_core.convert(mlx_models["q4g32"], tmp_path / "mlx", "mlx-lm", {"dequantize": True})
    assert "quantization" not in json.loads((tmp_path / "mlx" / "config.json").read_text())
    model, _ = load_model(mlx_models["q4g32"])
    want = np.array(dequantize_model(model)(mx.array(TOKENS)).astype(mx.float32))
    np.testing.assert_array_equal(logits(tmp_path / "mlx"), want)


# -- bad input ------------------------------------------------------------------------------------


def test_stray_weight_file_beside_the_index_is_corrupt(mlx_models, tmp_path):
    """mlx-lm loads every model*.safetensors: one the index does not name is an error."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(mlx_models["plain"], copy)
    shutil.copy(copy / "model.safetensors", copy / "model-extra.safetensors")
    with pytest.raises(CorruptInput, match="model-extra.safetensors.*remove it"):
        ckpt_core.load(copy, "mlx-lm")


def test_inconsistent_quantization_is_corrupt(mlx_models, tmp_path):
    """A config whose bits do not fit the packed shapes fails in one line naming the module."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(mlx_models["q4g32"], copy)
    config = json.loads((copy / "config.json").read_text())
    config["quantization"]["bits"] = 8
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CorruptInput, match=r"scales is \[64, 2\]; 8-bit weight"):
        ckpt_core.load(copy, "mlx-lm")


def test_dequantize_takes_true_or_false(mlx_models, tmp_path):
    with pytest.raises(UsageError, match="dequantize takes true or false"):
        ckpt_core.load(mlx_models["q4g32"], "mlx-lm", {"dequantize": "yes"})


def test_f32_model_round_trips(tmp_path):
    """A float32 HF model: through mlx-lm and back, bit for bit, and mlx-lm loads it."""
    source = save_hf(tmp_path / "f32", "llama", torch.float32)
    ckpt_core.convert(source, tmp_path / "mlx", "mlx-lm")
    ckpt_core.convert(tmp_path / "mlx", tmp_path / "hf", "hf")
    assert tensors_identical(source, tmp_path / "hf")
    np.testing.assert_array_equal(logits(tmp_path / "mlx"), logits(source))
