"""config.json <-> the canonical checkpoint: what is derived, what is carried.

An mlx-lm directory's config.json is the Hugging Face config plus ``quantization``, so it
is read and written by the ``hf`` format's rules: the writer derives ``model_type`` and
``architectures`` from a family it knows (``FAMILIES``), the hyper-parameters
(``CONFIG_KEYS``), ``tie_word_embeddings`` from the tie, ``dtype`` (and an older file's
``torch_dtype``) from the weights' float dtype, and ``quantization`` (mirrored as
``quantization_config``, as mlx-lm writes it) from the hyper-parameter of that name. Every
other field is carried in ``extra["hf"]["config"]``, only where it differs from what would
be derived: the place the ``hf`` format keeps the same fields, so a config (and the files
beside it) travels hf -> mlx-lm -> hf and back unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from ckpt_core import Checkpoint, dtypes
from ckpt_core.model import QUANTIZATION
from ckpt_core.torchfile.names import TORCH_DTYPES

EMBED, LM_HEAD = "model.embed_tokens.weight", "lm_head.weight"
TIE = {LM_HEAD: EMBED}
MIRROR = "quantization_config"  # mlx-lm writes ``quantization`` again under this name

# family -> (model_type, architecture): the families mlx-lm and transformers both name so
FAMILIES = {
    "llama": ("llama", "LlamaForCausalLM"),
    "mistral": ("mistral", "MistralForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
}

# canonical hyper-parameter -> config.json key
CONFIG_KEYS = {
    "vocab_size": "vocab_size",
    "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads",
    "n_kv_head": "num_key_value_heads",
    "d_model": "hidden_size",
    "d_ff": "intermediate_size",
    "head_dim": "head_dim",
}


def params_from_config(config: dict) -> dict[str, Any]:
    """Canonical hyper-parameters stated by a config.json (``quantization`` among them)."""
    params = {canon: config[key] for canon, key in CONFIG_KEYS.items() if key in config}
    if isinstance(config.get(QUANTIZATION), dict):
        params[QUANTIZATION] = config[QUANTIZATION]
    return params


def derived(ck: Checkpoint) -> dict[str, Any]:
    """The config.json fields that follow from ``ck``."""
    out: dict[str, Any] = {}
    if ck.arch.family in FAMILIES:
        model_type, architecture = FAMILIES[ck.arch.family]
        out |= {"model_type": model_type, "architectures": [architecture]}
    out["tie_word_embeddings"] = ck.ties == TIE
    floats = (t for t in (ck.tensors.get(EMBED), *ck.tensors.values()) if t is not None and dtypes.get(t.dtype).is_float)
    first = next(floats, None)
    if first is not None:
        out["dtype"] = TORCH_DTYPES[first.dtype]
    out |= {key: ck.arch.params[canon] for canon, key in CONFIG_KEYS.items() if canon in ck.arch.params}
    if QUANTIZATION in ck.arch.params:
        out[QUANTIZATION] = out[MIRROR] = ck.arch.params[QUANTIZATION]
    return out


def carried(config: dict, derived_fields: dict) -> dict[str, Any]:
    """The fields of ``config`` that ``derived_fields`` does not reproduce, sorted by key."""
    return {k: v for k, v in sorted(config.items()) if k not in derived_fields or not _same(v, derived_fields[k])}


def build(derived_fields: dict, carried_fields: dict) -> dict:
    """config.json: carried fields over derived ones, an older ``torch_dtype`` kept in step
    with the weights, keys sorted at the top level (as mlx-lm's ``save_config``)."""
    config = {**derived_fields, **carried_fields}
    if "torch_dtype" in config and "dtype" in derived_fields:
        config["torch_dtype"] = config["dtype"] = derived_fields["dtype"]
    return dict(sorted(config.items()))


def dump(config: dict) -> bytes:
    """config.json's bytes as mlx-lm writes them (indent 4)."""
    return json.dumps(config, indent=4).encode()


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
