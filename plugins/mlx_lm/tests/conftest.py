"""Fixtures of the mlx-lm plugin's tests, made once per session by the real libraries:
tiny Hugging Face models saved by transformers (with a tokenizer built here: no network),
and what ``mlx_lm.convert`` makes of them, plain and quantized."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

pytest.importorskip("mlx_lm", reason="mlx-lm is not installed (pip install 'ckpt-plugin-mlx-lm[mlx]'); these tests need it")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# family -> (config class name, config fields): small, with the features each family has
MODELS = {
    "llama": ("LlamaConfig", {"tie_word_embeddings": False}),
    "qwen2": ("Qwen2Config", {"tie_word_embeddings": True}),
    "qwen3": ("Qwen3Config", {"tie_word_embeddings": True, "head_dim": 16}),
}
SIZES = {"vocab_size": 64, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2}
# (bits, group_size) of the quantized fixtures mlx_lm.convert makes from the llama model
QUANTIZED = [(4, 32), (8, 64), (3, 32)]


def save_tokenizer(directory: Path) -> None:
    """A small word-level tokenizer, saved by transformers as a model directory has it."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<s>", "</s>", *(f"w{i}" for i in range(61))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(directory)


def save_hf(directory: Path, family: str, dtype=None) -> Path:
    """A seeded tiny ``family`` model saved by ``save_pretrained``, with its tokenizer."""
    name, fields = MODELS[family]
    torch.manual_seed(0)
    config = getattr(transformers, name)(**SIZES, **fields)
    model = transformers.AutoModelForCausalLM.from_config(config).to(dtype or torch.bfloat16)
    model.save_pretrained(directory)
    save_tokenizer(directory)
    return directory


def mlx_convert(src: Path, dst: Path, **kwargs) -> Path:
    """``mlx_lm.convert`` of ``src`` (its progress lines kept off the test output)."""
    from mlx_lm import convert

    with contextlib.redirect_stdout(io.StringIO()):
        convert(str(src), str(dst), **kwargs)
    return dst


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory) -> dict[str, Path]:
    """family -> a tiny HF model directory (bf16), made once."""
    root = tmp_path_factory.mktemp("hf-models")
    return {family: save_hf(root / family, family) for family in MODELS}


@pytest.fixture(scope="session")
def mlx_models(tmp_path_factory, hf_models) -> dict[str, Path]:
    """``plain`` (mlx_lm.convert of the llama model) and ``q{bits}g{group}`` quantized ones, made once."""
    root = tmp_path_factory.mktemp("mlx-models")
    made = {"plain": mlx_convert(hf_models["llama"], root / "plain")}
    for bits, group in QUANTIZED:
        made[f"q{bits}g{group}"] = mlx_convert(hf_models["llama"], root / f"q{bits}g{group}", quantize=True,
                                               q_bits=bits, q_group_size=group)
    return made
